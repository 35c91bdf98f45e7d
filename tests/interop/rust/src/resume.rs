//! The original SDK's ResilientSubscription across daemon crashes. pytest publishes, SIGKILLs
//! the daemon, restarts it on the same port and data and publishes more; this side checks that
//! every head_id 1..count arrives exactly once, in order, that every reopened stream starts at
//! the last head_id + 1, and that reopens are spaced by the fixed 250 ms delay. Progress goes
//! to a file that pytest polls to know when to crash the daemon.

use std::time::Duration;

use crate::sdk::{MsgbusClient, SubscribeOptions};
use crate::{check, must, ok, Flags};

pub async fn run(flags: &Flags) {
    let addr = flags.get("addr");
    let topic = flags.get("topic");
    let count: u64 = flags.number("count");
    let progress = std::path::PathBuf::from(flags.get("progress"));
    let min_reconnects: usize = flags.number("min-reconnects");
    let client = must(
        MsgbusClient::connect(format!("http://{addr}")).await,
        "connect",
    );
    let options = SubscribeOptions::default();
    let delay = options.reconnect_delay;
    let mut subscription = client.subscribe_reconnecting_with_options(&topic, options);

    let mut last = 0u64;
    let mut surfaced = 0;
    let run = async {
        while last < count {
            let message = match subscription.next_message().await {
                Ok(message) => message,
                // tonic reports a connection cut by SIGKILL as UNKNOWN ("h2 protocol error"),
                // which the original SDK does not retry: it returns the error once and keeps the
                // broken stream, whose next read ends it and so reconnects. An application
                // calls next_message again, and so does this loop, a bounded number of times.
                Err(error) if error.code() == Some(tonic::Code::Unknown) && surfaced < 10 => {
                    surfaced += 1;
                    println!("note next_message returned {error:?}; calling it again");
                    continue;
                }
                Err(error) => crate::fail(format!("next_message: {error:?}")),
            };
            check(message.head_id == last + 1, || {
                format!(
                    "received head_id {} after {last}: not every head exactly once in order",
                    message.head_id
                )
            });
            let want = format!("m-{}", message.head_id);
            check(message.payload == want.as_bytes(), || {
                format!("head {} payload {:?}", message.head_id, message.payload)
            });
            last = message.head_id;
            let tmp = progress.with_extension("tmp");
            must(std::fs::write(&tmp, last.to_string()), "write progress");
            must(std::fs::rename(&tmp, &progress), "rename progress");
        }
    };
    must(
        tokio::time::timeout(Duration::from_secs(180), run).await,
        "the subscription did not finish in 180 s",
    );

    let opens = &subscription.opens;
    for pair in opens.windows(2) {
        let gap = pair[1].1.duration_since(pair[0].1);
        check(gap >= delay, || {
            format!("reopened after {gap:?}, sooner than the fixed {delay:?}")
        });
    }
    // Every message arrived exactly once and in order, so a stream opened from `from` resumed
    // right after head `from - 1`: the starts must be non-decreasing and within 1..=count.
    let starts: Vec<u64> = opens.iter().map(|(from, _)| *from).collect();
    check(
        starts[0] == 1
            && starts.windows(2).all(|w| w[0] <= w[1])
            && starts.iter().all(|s| *s <= count),
        || format!("streams opened from {starts:?}"),
    );
    let reconnects = opens.len() - 1;
    check(reconnects >= min_reconnects, || {
        format!("only {reconnects} reconnects, want {min_reconnects}")
    });
    ok(format!(
        "ResilientSubscription: head_ids 1..{count} exactly once, in order, across {reconnects} reconnects (each >= {delay:?}, each from last + 1); {surfaced} crash(es) surfaced once as UNKNOWN"
    ));
}
