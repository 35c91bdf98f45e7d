package main

// TLS and mTLS: the daemon serves certificates that the test made; the client trusts only the
// test's CA and, for mTLS, presents the test's client certificate.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

func runTLS(args []string) {
	flags, addr := newFlags("tls")
	caPath := flags.String("ca", "", "PEM CA that signed the daemon's certificate")
	certPath := flags.String("cert", "", "client certificate (mTLS)")
	keyPath := flags.String("key", "", "client key (mTLS)")
	requireClientCert := flags.Bool("require-client-cert", false, "also check that a client without a certificate is refused")
	_ = flags.Parse(args)
	check(*addr != "" && *caPath != "", "tls needs -addr and -ca")

	caPEM, err := os.ReadFile(*caPath)
	noErr(err, "read CA")
	roots := x509.NewCertPool()
	check(roots.AppendCertsFromPEM(caPEM), "no certificate in %s", *caPath)
	config := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if *certPath != "" {
		pair, err := tls.LoadX509KeyPair(*certPath, *keyPath)
		noErr(err, "load client certificate")
		config.Certificates = []tls.Certificate{pair}
	}

	ctx, cancel := deadline(60)
	defer cancel()
	client, err := Dial(ctx, *addr, grpc.WithTransportCredentials(credentials.NewTLS(config)))
	noErr(err, "Dial with TLS")
	defer client.Close()
	health, err := client.Health(ctx)
	noErr(err, "Health over TLS")
	check(health == "SERVING", "Health over TLS = %q", health)
	message, err := client.Publish(ctx, "interop.go.tls", []byte("secret"))
	noErr(err, "Publish over TLS")
	messages, err := client.Fetch(ctx, "interop.go.tls", nil, message.GetHeadId(), 1)
	noErr(err, "Fetch over TLS")
	check(len(messages) == 1 && string(messages[0].GetPayload()) == "secret", "Fetch over TLS = %v", messages)
	mode := "TLS"
	if *certPath != "" {
		mode = "mTLS"
	}
	ok("%s: Dial, Health, Publish and Fetch with the test's certificates", mode)

	if *requireClientCert {
		err := healthError(ctx, *addr, &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})
		check(err != nil, "a client without a certificate was served")
		ok("mTLS: a client without a certificate is refused (%v)", err)
	}
	err = healthError(ctx, *addr, &tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12})
	check(err != nil, "a client that trusts no CA accepted the daemon's certificate")
	ok("%s: a client that does not trust the test CA refuses the daemon", mode)
}

// healthError is the error of one Health call over a fresh connection with this configuration.
func healthError(ctx context.Context, addr string, config *tls.Config) error {
	client, err := DialLazy(addr, grpc.WithTransportCredentials(credentials.NewTLS(config)))
	noErr(err, "DialLazy")
	defer client.Close()
	callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = client.Health(callCtx)
	return err
}
