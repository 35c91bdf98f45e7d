// Command msgbus-interop-go drives a real msgbusd through the msgbus.v1 contract with grpc-go,
// the way the original Go SDK does, and checks every answer. It prints one "ok" line per check
// and exits 1 with a "FAIL" line at the first answer that differs from the contract.
//
//	msgbus-interop-go contract -addr 127.0.0.1:PORT -node tenant/default/device -max-payload 4096
//	msgbus-interop-go tls      -addr ... -ca ca.pem [-cert client.pem -key client.key -require-client-cert]
//	msgbus-interop-go resume   -addr ... -topic T -count N -progress FILE
//	msgbus-interop-go fixtures -dir tests/interop/fixtures
//	msgbus-interop-go sync-pages -addr ... [-min-states N]
//	msgbus-interop-go retention-check -addr ... -topic trim.X -untrimmed-topic keep.X [-publish 20 -max-messages 5]
//	msgbus-interop-go heads-pages -addr ... -topics a,b,c -change b,new [-page-size 3]
//	msgbus-interop-go heads-pages -addr ... -stale-cursor CURSOR
//	msgbus-interop-go pattern-subscribe -addr ... -pattern telemetry -messages N -logs L
//	msgbus-interop-go publish-stream -addr ... -topic T [-count 10]
//	msgbus-interop-go cursors -addr ... -topic T [-count 5 -names 7 -page-size 3]
//	msgbus-interop-go idempotency -addr ... -topic T [-key K]
//	msgbus-interop-go fifo-leases -addr ... -queue Q (a queue with max_attempts 2)
//	msgbus-interop-go push -addr ... -topic T [-node tenant/default/go-device -count 10]
//	msgbus-interop-go publish-latency -addr ... -topic T [-count 1000 -warm 50 -size 256]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	msgbusv1 "msgbus.test/interop/gen/msgbus/v1"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: msgbus-interop-go contract|tls|resume|fixtures|sync-pages|retention-check|heads-pages|publish-stream [flags]")
	}
	command, args := os.Args[1], os.Args[2:]
	switch command {
	case "contract":
		runContract(args)
	case "tls":
		runTLS(args)
	case "resume":
		runResume(args)
	case "fixtures":
		runFixtures(args)
	case "sync-pages":
		runSyncPages(args)
	case "retention-check":
		runRetentionCheck(args)
	case "heads-pages":
		runHeadsPages(args)
	case "pattern-subscribe":
		runPatternSubscribe(args)
	case "publish-stream":
		runPublishStream(args)
	case "cursors":
		runCursors(args)
	case "idempotency":
		runIdempotency(args)
	case "fifo-leases":
		runFifoLeases(args)
	case "push":
		runPush(args)
	case "publish-latency":
		runPublishLatency(args)
	default:
		fail("unknown command %q", command)
	}
	fmt.Printf("PASS %s\n", command)
}

func fail(format string, args ...any) {
	fmt.Printf("FAIL "+format+"\n", args...)
	os.Exit(1)
}

// check stops the program at the first failed expectation.
func check(ok bool, format string, args ...any) {
	if !ok {
		fail(format, args...)
	}
}

func ok(format string, args ...any) {
	fmt.Printf("ok   "+format+"\n", args...)
}

func noErr(err error, what string) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

func parseNode(key string) *msgbusv1.NodeId {
	parts := strings.Split(key, "/")
	if len(parts) != 3 {
		fail("node %q is not tenant/bl/device", key)
	}
	return &msgbusv1.NodeId{TenantId: parts[0], BlName: parts[1], DeviceId: parts[2]}
}

func nodeKey(node *msgbusv1.NodeId) string {
	return node.GetTenantId() + "/" + node.GetBlName() + "/" + node.GetDeviceId()
}

// newFlags makes a command's flag set with the -addr flag every daemon command takes.
func newFlags(name string) (*flag.FlagSet, *string) {
	flags := flag.NewFlagSet(name, flag.ExitOnError)
	return flags, flags.String("addr", "", "daemon address host:port")
}

func deadline(seconds int) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), time.Duration(seconds)*time.Second)
}
