//! The wire fixtures shared with Python and Go: every message type decodes from its golden bytes
//! to the values of its proto3 JSON twin and encodes back to the same bytes; every delete-marker
//! payload decodes to the values in markers.json and encodes back to the same bytes.

use std::path::Path;

use prost::Message;
use serde::{Deserialize, Serialize};

use crate::{check, must, ok, pb, Flags};

/// The original's tombstone JSON, fields in serde's order.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct DeleteMarker {
    pub topic: String,
    pub origin: MarkerOrigin,
    pub from_head_id: u64,
    pub to_head_id: u64,
    pub created_at_ms: u64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct MarkerOrigin {
    pub tenant_id: String,
    pub bl_name: String,
    pub device_id: String,
}

#[derive(Deserialize)]
struct MarkerCase {
    file: String,
    marker: DeleteMarker,
}

#[derive(Deserialize)]
struct WireCase {
    message: String,
    maps: bool,
}

/// Checks one type; returns whether its re-encoding was compared byte for byte.
fn same<T>(dir: &Path, name: &str, maps: bool) -> bool
where
    T: Message + Default + PartialEq + std::fmt::Debug + for<'de> Deserialize<'de>,
{
    let golden = must(std::fs::read(dir.join(format!("{name}.bin"))), name);
    let document = must(std::fs::read(dir.join(format!("{name}.json"))), name);
    let decoded = must(T::decode(golden.as_slice()), &format!("decode {name}"));
    let expected: T = must(
        serde_json::from_slice(&document),
        &format!("JSON of {name}"),
    );
    check(decoded == expected, || {
        format!("{name} decodes to {decoded:?}, want {expected:?}")
    });
    let encoded = expected.encode_to_vec();
    if maps {
        let again = must(
            T::decode(encoded.as_slice()),
            &format!("decode re-encoded {name}"),
        );
        check(again == expected, || {
            format!("{name} re-encodes to other values: {again:?}")
        });
        return false;
    }
    check(encoded == golden, || {
        format!("{name} encodes to {encoded:02x?}, want {golden:02x?}")
    });
    true
}

/// Dispatches a fixture to its generated type; None for a type this crate does not know.
macro_rules! check_wire_type {
    ($dir:expr, $case:expr, $($name:ident),* $(,)?) => {
        match $case.message.as_str() {
            $(stringify!($name) => Some(same::<pb::$name>($dir, stringify!($name), $case.maps)),)*
            _ => None,
        }
    };
}

pub fn run(flags: &Flags) {
    let root = std::path::PathBuf::from(flags.get("dir"));
    let wire = root.join("wire");
    let index: Vec<WireCase> = must(
        serde_json::from_slice(&must(std::fs::read(wire.join("index.json")), "index")),
        "index",
    );
    let mut exact = 0;
    for case in &index {
        let checked = check_wire_type!(
            &wire,
            case,
            NodeId,
            MessageEnvelope,
            PublishRequest,
            PublishResponse,
            FetchRequest,
            FetchResponse,
            SubscribeRequest,
            SubscribeResponse,
            GetHeadRequest,
            GetHeadResponse,
            TopicHead,
            PeerSyncState,
            ListHeadsRequest,
            ListHeadsResponse,
            ListPeerSyncStatesRequest,
            ListPeerSyncStatesResponse,
            DeleteRangeRequest,
            DeleteRangeResponse,
            FifoMessage,
            EnqueueFifoRequest,
            EnqueueFifoResponse,
            PeekFifoRequest,
            PeekFifoResponse,
            AckFifoRequest,
            AckFifoResponse,
            RejectFifoRequest,
            RejectFifoResponse,
            HealthRequest,
            HealthResponse,
            ReadyRequest,
            ReadyResponse,
            PublishBatchRequest,
            PublishBatchResponse,
            PublishStreamRequest,
            PublishStreamResponse,
            PushRequest,
            PushHello,
            PushOffer,
            PushBatch,
            PushResponse,
            PushWelcome,
            PushOfferReply,
            PushAck,
            Cursor,
            CommitCursorRequest,
            CommitCursorResponse,
            GetCursorRequest,
            GetCursorResponse,
            ListCursorsRequest,
            ListCursorsResponse,
            DeleteCursorRequest,
            DeleteCursorResponse,
            FifoLease,
            LeaseFifoRequest,
            LeaseFifoResponse,
            AckFifoLeaseRequest,
            AckFifoLeaseResponse,
            RejectFifoLeaseRequest,
            RejectFifoLeaseResponse,
            ExtendFifoLeaseRequest,
            ExtendFifoLeaseResponse,
            ListFifoRequest,
            ListFifoResponse,
            RedriveFifoRequest,
            RedriveFifoResponse,
        );
        match checked {
            Some(true) => exact += 1,
            Some(false) => {}
            None => crate::fail(format!(
                "fixture for {}, a type this client does not know",
                case.message
            )),
        }
    }
    // The generated file's own list of types must match the index too.
    let generated = include_str!(concat!(env!("OUT_DIR"), "/msgbus.v1.rs"))
        .matches("pub struct ")
        .count();
    let services = 1; // MsgbusServiceClient
    check(index.len() == generated - services, || {
        format!(
            "{} fixtures for {} generated types",
            index.len(),
            generated - services
        )
    });
    ok(format!(
        "wire fixtures: {} message types decode to their values; {exact} encode to the golden bytes, {} with maps to the same values",
        index.len(),
        index.len() - exact
    ));

    let manifest = must(
        std::fs::read(root.join("markers.json")),
        "read markers.json",
    );
    let cases: Vec<MarkerCase> = must(serde_json::from_slice(&manifest), "markers.json");
    check(!cases.is_empty(), || "markers.json lists no marker".into());
    for case in &cases {
        let payload = must(
            std::fs::read(root.join("markers").join(&case.file)),
            &case.file,
        );
        let marker: DeleteMarker = must(serde_json::from_slice(&payload), &case.file);
        check(marker == case.marker, || {
            format!("marker {} decodes to {marker:?}", case.file)
        });
        let encoded = must(serde_json::to_vec(&marker), "encode marker");
        check(encoded == payload, || {
            format!(
                "marker {} encodes to {}",
                case.file,
                String::from_utf8_lossy(&encoded)
            )
        });
    }
    ok(format!(
        "delete-marker fixtures: {} payloads decode and encode byte for byte",
        cases.len()
    ));
}
