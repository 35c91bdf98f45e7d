//! msgbus-interop drives a real msgbusd through the msgbus.v1 contract with tonic and prost,
//! the way the original Rust SDK does, and checks every answer. It prints one "ok" line per
//! check and exits 1 with a "FAIL" line at the first answer that differs from the contract.
//!
//! ```text
//! msgbus-interop contract -addr 127.0.0.1:PORT -node tenant/default/device -max-payload 4096
//! msgbus-interop tls      -addr ... -ca ca.pem [-cert client.pem -key client.key -require-client-cert]
//! msgbus-interop resume   -addr ... -topic T -count N -progress FILE -min-reconnects 2
//! msgbus-interop fixtures -dir tests/interop/fixtures
//! ```

mod contract;
mod fixtures;
mod resume;
mod sdk;
mod tls;

use std::collections::HashMap;
use std::fmt::Display;

/// The generated msgbus.v1 messages, their proto3 JSON mapping and the tonic client.
pub mod pb {
    tonic::include_proto!("msgbus.v1");
    include!(concat!(env!("OUT_DIR"), "/msgbus.v1.serde.rs"));
}

/// Stops the program at the first failed expectation.
pub fn fail(message: impl Display) -> ! {
    println!("FAIL {message}");
    std::process::exit(1)
}

/// Prints what was checked.
pub fn ok(message: impl Display) {
    println!("ok   {message}");
}

/// Fails with `message` unless `condition` holds.
pub fn check(condition: bool, message: impl FnOnce() -> String) {
    if !condition {
        fail(message());
    }
}

/// Unwraps a result, failing with `what` and the error.
pub fn must<T, E: std::fmt::Debug>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|error| fail(format!("{what}: {error:?}")))
}

/// `-name value` flags, plus bare `-name` switches.
pub struct Flags(HashMap<String, String>);

impl Flags {
    fn parse(args: &[String]) -> Flags {
        let mut map = HashMap::new();
        let mut i = 0;
        while i < args.len() {
            let name = args[i].trim_start_matches('-').to_string();
            match args.get(i + 1) {
                Some(value) if !value.starts_with('-') => {
                    map.insert(name, value.clone());
                    i += 2;
                }
                _ => {
                    map.insert(name, "true".to_string());
                    i += 1;
                }
            }
        }
        Flags(map)
    }

    /// A required flag.
    pub fn get(&self, name: &str) -> String {
        self.0
            .get(name)
            .cloned()
            .unwrap_or_else(|| fail(format!("missing -{name}")))
    }

    /// An optional flag.
    pub fn opt(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    /// A required number.
    pub fn number<T: std::str::FromStr>(&self, name: &str) -> T {
        self.get(name)
            .parse()
            .unwrap_or_else(|_| fail(format!("-{name} is not a number")))
    }
}

/// `tenant/bl/device` as a NodeId.
pub fn parse_node(key: &str) -> pb::NodeId {
    let parts: Vec<&str> = key.split('/').collect();
    check(parts.len() == 3, || {
        format!("node {key:?} is not tenant/bl/device")
    });
    pb::NodeId {
        tenant_id: parts[0].into(),
        bl_name: parts[1].into(),
        device_id: parts[2].into(),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first().cloned() else {
        fail("usage: msgbus-interop contract|tls|resume|fixtures [flags]");
    };
    let flags = Flags::parse(&args[1..]);
    match command.as_str() {
        "contract" => contract::run(&flags).await,
        "tls" => tls::run(&flags).await,
        "resume" => resume::run(&flags).await,
        "fixtures" => fixtures::run(&flags),
        other => fail(format!("unknown command {other:?}")),
    }
    println!("PASS {command}");
}
