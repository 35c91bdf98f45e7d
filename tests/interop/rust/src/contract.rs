//! Every RPC of the original contract, called through the original Rust SDK's shapes.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::Code;

use crate::sdk::{MsgbusClient, SdkError};
use crate::{check, fail, must, ok, parse_node, pb, Flags};

pub async fn run(flags: &Flags) {
    let addr = flags.get("addr");
    let node = parse_node(&flags.get("node"));
    let max_payload: usize = flags.number("max-payload");
    let mut client = must(
        MsgbusClient::connect(format!("http://{addr}")).await,
        "connect",
    );
    ok(format!("connect http://{addr}"));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let topic = format!("interop.rust.{nanos}");

    health(&mut client, &node).await;
    publish_and_fetch(&mut client, &node, &topic).await;
    subscribe_replay_then_live(&mut client, &topic).await;
    heads(&mut client, &node, &topic).await;
    delete_range(&mut client, &topic).await;
    fifo(&mut client, &node, &topic).await;
    invalid_input(&mut client, &node, max_payload).await;
}

fn head_ids(messages: &[pb::MessageEnvelope]) -> Vec<u64> {
    messages.iter().map(|m| m.head_id).collect()
}

fn key(node: &Option<pb::NodeId>) -> String {
    node.as_ref()
        .map(|n| format!("{}/{}/{}", n.tenant_id, n.bl_name, n.device_id))
        .unwrap_or_default()
}

async fn health(client: &mut MsgbusClient, node: &pb::NodeId) {
    let status = must(client.health().await, "health");
    check(status == "SERVING", || format!("health = {status:?}"));
    let reply = must(client.inner.health(pb::HealthRequest {}).await, "Health").into_inner();
    check(reply.node.as_ref() == Some(node), || {
        format!("Health node = {:?}", reply.node)
    });
    let ready = must(client.ready().await, "ready");
    check(
        ready.ready && ready.status == "READY" && ready.error.is_empty(),
        || format!("ready = {ready:?}"),
    );
    check(ready.node.as_ref() == Some(node), || {
        format!("Ready node = {:?}", ready.node)
    });
    ok(format!(
        "health SERVING and ready READY as {}",
        key(&reply.node)
    ));
}

async fn publish_and_fetch(client: &mut MsgbusClient, node: &pb::NodeId, topic: &str) {
    for i in 1..=3u64 {
        let headers = BTreeMap::from([
            ("n".to_string(), i.to_string()),
            ("kind".to_string(), "interop".to_string()),
        ]);
        let message = must(
            client
                .publish_with_headers(topic, format!("m-{i}"), headers)
                .await,
            "publish",
        );
        check(message.head_id == i, || {
            format!("publish #{i} head_id = {}", message.head_id)
        });
        check(
            message.topic == topic && message.origin.as_ref() == Some(node),
            || format!("envelope {message:?}"),
        );
        check(
            message.id.len() == 36 && message.created_at_ms > 0 && !message.deleted,
            || format!("envelope {message:?}"),
        );
    }
    ok("publish: head_ids 1, 2, 3 with server ids and the local origin");

    let messages = must(client.fetch(topic, None, 0, 0).await, "fetch");
    check(head_ids(&messages) == [1, 2, 3], || {
        format!("fetch head_ids {:?}", head_ids(&messages))
    });
    for m in &messages {
        check(m.payload == format!("m-{}", m.head_id).into_bytes(), || {
            format!("fetch payload {:?}", m.payload)
        });
        check(
            m.headers.get("n") == Some(&m.head_id.to_string())
                && m.headers.get("kind").map(String::as_str) == Some("interop"),
            || format!("fetch headers {:?}", m.headers),
        );
    }
    let page = must(
        client.fetch(topic, Some(node.clone()), 2, 1).await,
        "fetch page",
    );
    check(head_ids(&page) == [2], || {
        format!("fetch from 2 limit 1 = {:?}", head_ids(&page))
    });
    let unknown = must(
        client.fetch(&format!("{topic}.unknown"), None, 1, 10).await,
        "fetch unknown",
    );
    check(unknown.is_empty(), || {
        format!("fetch of an unknown log gave {} messages", unknown.len())
    });
    ok("fetch: from 0 (as 1), paging with limit, an unknown log is an empty stream");
}

async fn subscribe_replay_then_live(client: &mut MsgbusClient, topic: &str) {
    let mut stream = must(client.subscribe(topic, None, 2).await, "subscribe");
    let mut got = Vec::new();
    while got.len() < 2 {
        let response = must(stream.message().await, "subscribe replay")
            .unwrap_or_else(|| fail("stream ended"));
        got.push(response.message.map(|m| m.head_id).unwrap_or_default());
    }
    must(
        client.publish(topic, "m-4").await,
        "publish while subscribed",
    );
    let response =
        must(stream.message().await, "subscribe live").unwrap_or_else(|| fail("stream ended"));
    let live = response
        .message
        .unwrap_or_else(|| fail("empty subscribe response"));
    got.push(live.head_id);
    check(got == [2, 3, 4], || {
        format!("subscribe from 2 delivered {got:?}, want replay 2, 3 then live 4")
    });
    check(live.payload == b"m-4", || {
        format!("live payload {:?}", live.payload)
    });
    ok("subscribe: replay 2, 3 then live 4, in order, no duplicate");
}

async fn heads(client: &mut MsgbusClient, node: &pb::NodeId, topic: &str) {
    let head = must(client.get_head(topic, None).await, "get_head");
    check(head.head_id == 4 && head.found, || {
        format!("get_head = {head:?}")
    });
    let missing = must(
        client.get_head(&format!("{topic}.none"), None).await,
        "get_head unknown",
    );
    check(missing.head_id == 0 && !missing.found, || {
        format!("get_head unknown = {missing:?}")
    });
    ok("get_head: 4 found; an unknown log is {0, false} with status OK");

    let heads = must(client.list_heads().await, "list_heads");
    let mine = heads
        .iter()
        .find(|h| h.topic == topic && h.origin.as_ref() == Some(node));
    check(mine.map(|h| h.head_id) == Some(4), || {
        format!("list_heads has no head 4 for {topic}")
    });
    let order: Vec<(String, String)> = heads
        .iter()
        .map(|h| (h.topic.clone(), key(&h.origin)))
        .collect();
    check(order.windows(2).all(|w| w[0] < w[1]), || {
        "list_heads is not ordered by topic, origin".into()
    });
    ok(format!(
        "list_heads: {} heads ordered by topic and origin, {topic} at 4",
        heads.len()
    ));

    let states = must(
        client.list_peer_sync_states().await,
        "list_peer_sync_states",
    );
    check(states.is_empty(), || {
        format!("{} sync states without peers", states.len())
    });
    ok("list_peer_sync_states: empty without peers");
}

async fn delete_range(client: &mut MsgbusClient, topic: &str) {
    let markers_before = must(client.get_head("$msgbus.delete", None).await, "marker head").head_id;
    let count = must(client.delete_range(topic, None, 2, 3).await, "delete_range");
    check(count == 2, || format!("delete_range 2..3 deleted {count}"));
    let messages = must(
        client.fetch(topic, None, 1, 100).await,
        "fetch after delete",
    );
    let flags: Vec<bool> = messages.iter().map(|m| m.deleted).collect();
    check(flags == [false, true, true, false], || {
        format!("deleted flags {flags:?}")
    });
    for m in messages.iter().filter(|m| m.deleted) {
        check(m.payload.is_empty() && m.headers.is_empty(), || {
            format!("deleted #{} keeps data", m.head_id)
        });
    }
    let again = must(
        client.delete_range(topic, None, 1, 3).await,
        "delete_range again",
    );
    check(again == 1, || {
        format!("delete_range 1..3 after 2..3 counted {again}, want 1")
    });
    ok("delete_range: counts, deleted flags [f t t f], payloads erased, repeats not counted");

    let markers = must(
        client
            .fetch("$msgbus.delete", None, markers_before + 1, 100)
            .await,
        "fetch markers",
    );
    check(markers.len() == 2, || {
        format!("{} markers, want 2", markers.len())
    });
    let marker: crate::fixtures::DeleteMarker =
        must(serde_json::from_slice(&markers[0].payload), "marker JSON");
    check(
        marker.topic == topic && marker.from_head_id == 2 && marker.to_head_id == 3,
        || format!("marker {marker:?}"),
    );
    ok("$msgbus.delete: one marker per delete_range, in the original's JSON");
}

async fn fifo(client: &mut MsgbusClient, node: &pb::NodeId, topic: &str) {
    let queue = format!("{topic}.queue");
    let target = Some(node.clone());
    let headers = BTreeMap::from([("k".to_string(), "v".to_string())]);
    let first = must(
        client
            .enqueue_fifo_with_headers(&queue, topic, target.clone(), "job-1", headers)
            .await,
        "enqueue",
    );
    let second = must(
        client
            .enqueue_fifo_with_headers(&queue, topic, target, "job-2", BTreeMap::new())
            .await,
        "enqueue",
    );
    check(first.sequence == 1 && second.sequence == 2, || {
        format!("sequences {} {}", first.sequence, second.sequence)
    });
    check(
        first.source.as_ref() == Some(node)
            && first.headers.get("k").map(String::as_str) == Some("v"),
        || format!("enqueued {first:?}"),
    );
    check(
        must(client.peek_fifo(&queue).await, "peek").id == first.id,
        || "peek is not the first".into(),
    );
    check(
        !must(client.ack_fifo(&queue, &second.id).await, "ack second"),
        || "ack behind the front accepted".into(),
    );
    check(
        must(client.reject_fifo(&queue, &first.id).await, "reject"),
        || "reject of the front refused".into(),
    );
    let front = must(client.peek_fifo(&queue).await, "peek");
    check(front.id == first.id && front.attempts == 1, || {
        format!("after reject the front is {front:?}")
    });
    for message in [&first, &second] {
        check(
            must(client.ack_fifo(&queue, &message.id).await, "ack"),
            || format!("ack of front #{} refused", message.sequence),
        );
    }
    let empty = client.peek_fifo(&queue).await;
    check(
        matches!(&empty, Err(e) if e.code() == Some(Code::NotFound)),
        || format!("peek of an empty queue: {empty:?}"),
    );
    ok("fifo: sequences 1, 2; only the front acks; reject keeps it at the front; empty is NOT_FOUND");
}

async fn invalid_input(client: &mut MsgbusClient, node: &pb::NodeId, max_payload: usize) {
    let foreign = pb::NodeId {
        tenant_id: "tenant".into(),
        bl_name: "default".into(),
        device_id: "someone-else".into(),
    };
    let mut outcomes: Vec<(&str, Option<Code>, Code)> = Vec::new();
    let code = |result: Result<(), SdkError>| result.err().and_then(|e| e.code());
    outcomes.push((
        "publish empty topic",
        code(client.publish("", "x").await.map(drop)),
        Code::InvalidArgument,
    ));
    outcomes.push((
        "publish $msgbus.delete",
        code(client.publish("$msgbus.delete", "x").await.map(drop)),
        Code::PermissionDenied,
    ));
    outcomes.push((
        "publish $msgbus.other",
        code(client.publish("$msgbus.other", "x").await.map(drop)),
        Code::PermissionDenied,
    ));
    let mut impostor = client.clone().with_default_origin(foreign.clone());
    outcomes.push((
        "publish foreign origin",
        code(impostor.publish("t", "x").await.map(drop)),
        Code::PermissionDenied,
    ));
    outcomes.push((
        "publish oversized",
        code(
            client
                .publish("t", vec![0u8; max_payload + 1])
                .await
                .map(drop),
        ),
        Code::InvalidArgument,
    ));
    outcomes.push((
        "delete_range from > to",
        code(client.delete_range("t", None, 3, 2).await.map(drop)),
        Code::InvalidArgument,
    ));
    outcomes.push((
        "delete_range foreign",
        code(
            client
                .delete_range("t", Some(foreign), 1, 2)
                .await
                .map(drop),
        ),
        Code::PermissionDenied,
    ));
    let no_target = client
        .enqueue_fifo_with_headers("q", "t", None, "x", BTreeMap::new())
        .await;
    outcomes.push((
        "enqueue_fifo without target",
        code(no_target.map(drop)),
        Code::InvalidArgument,
    ));
    outcomes.push((
        "fetch empty topic",
        code(client.fetch("", None, 1, 1).await.map(drop)),
        Code::InvalidArgument,
    ));
    for (what, got, want) in &outcomes {
        check(*got == Some(*want), || {
            format!("{what}: {got:?}, want {want:?}")
        });
    }
    let head = must(client.get_head("t", Some(node.clone())).await, "get_head t");
    check(!head.found, || {
        format!("a refused publish stored head {}", head.head_id)
    });
    ok(format!(
        "invalid input: {} refusals with the contract's status codes, nothing stored",
        outcomes.len()
    ));
}
