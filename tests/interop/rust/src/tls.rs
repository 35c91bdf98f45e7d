//! TLS and mTLS with the certificates the test made: tonic's rustls stack trusts only the
//! test's CA and, for mTLS, presents the test's client certificate.

use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::pb::msgbus_service_client::MsgbusServiceClient;
use crate::sdk::MsgbusClient;
use crate::{check, must, ok, Flags};

async fn connect(addr: &str, tls: ClientTlsConfig) -> Result<MsgbusClient, String> {
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(30)) // generous: CI boxes are loaded
        .tls_config(tls)
        .map_err(|e| e.to_string())?;
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    Ok(MsgbusClient::from_channel_client(MsgbusServiceClient::new(
        channel,
    )))
}

/// Whether a Health call over this TLS configuration is answered within 10 s.
async fn served(addr: &str, tls: ClientTlsConfig) -> Result<String, String> {
    let mut client = connect(addr, tls).await?;
    let call = tokio::time::timeout(Duration::from_secs(10), client.health()).await;
    match call {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(error)) => Err(format!("{error:?}")),
        Err(_) => Err("timed out".into()),
    }
}

pub async fn run(flags: &Flags) {
    let addr = flags.get("addr");
    let ca = Certificate::from_pem(must(std::fs::read(flags.get("ca")), "read CA"));
    let base = ClientTlsConfig::new()
        .ca_certificate(ca)
        .domain_name("localhost");
    let mutual = flags.opt("cert").is_some();
    let tls = if mutual {
        let cert = must(std::fs::read(flags.get("cert")), "read client certificate");
        let key = must(std::fs::read(flags.get("key")), "read client key");
        base.clone().identity(Identity::from_pem(cert, key))
    } else {
        base.clone()
    };
    let mode = if mutual { "mTLS" } else { "TLS" };

    let mut client = must(connect(&addr, tls).await, "connect with TLS");
    let status = must(client.health().await, "health over TLS");
    check(status == "SERVING", || {
        format!("health over TLS = {status:?}")
    });
    let message = must(
        client.publish("interop.rust.tls", "secret").await,
        "publish over TLS",
    );
    let messages = must(
        client
            .fetch("interop.rust.tls", None, message.head_id, 1)
            .await,
        "fetch over TLS",
    );
    check(
        messages.len() == 1 && messages[0].payload == b"secret",
        || format!("fetch over TLS = {messages:?}"),
    );
    ok(format!(
        "{mode}: connect, health, publish and fetch with the test's certificates"
    ));

    if flags.opt("require-client-cert").is_some() {
        let anonymous = served(&addr, base.clone()).await;
        check(anonymous.is_err(), || {
            format!("a client without a certificate was served: {anonymous:?}")
        });
        ok(format!(
            "mTLS: a client without a certificate is refused ({})",
            anonymous.unwrap_err()
        ));
    }
    // Without the test CA among its roots (and with no built-in roots) the client must refuse.
    let refused = served(&addr, ClientTlsConfig::new().domain_name("localhost")).await;
    check(refused.is_err(), || {
        format!("a client that does not trust the test CA was served: {refused:?}")
    });
    ok(format!(
        "{mode}: a client that does not trust the test CA refuses the daemon"
    ));
}
