//! The calls of the original Rust SDK (crates/msgbus-sdk-rust), reproduced with the same shapes
//! and defaults: an eager `connect`, a default origin sent with every write, `fetch` collecting
//! the page, and `ResilientSubscription`, which reopens the stream after a fixed delay from the
//! last head_id + 1.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::pb;
use crate::pb::msgbus_service_client::MsgbusServiceClient;

/// The SDK's error: a transport failure, a gRPC status, or a malformed answer.
#[derive(Debug)]
#[allow(dead_code)] // the payloads are read through Debug, in failure messages
pub enum SdkError {
    Transport(tonic::transport::Error),
    Status(Status),
    Protocol(String),
}

impl From<Status> for SdkError {
    fn from(status: Status) -> Self {
        SdkError::Status(status)
    }
}

impl SdkError {
    /// The gRPC code, or None for transport and protocol errors.
    pub fn code(&self) -> Option<Code> {
        match self {
            SdkError::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, SdkError>;

/// The original SDK's subscription options; `Default` is `{None, 1, 100, 250 ms}`.
#[derive(Clone, Debug)]
pub struct SubscribeOptions {
    pub origin: Option<pb::NodeId>,
    pub from_head_id: u64,
    pub replay_limit: u32,
    pub reconnect_delay: Duration,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            origin: None,
            from_head_id: 1,
            replay_limit: 100,
            reconnect_delay: Duration::from_millis(250),
        }
    }
}

/// A msgbus client over one tonic channel.
#[derive(Clone)]
pub struct MsgbusClient {
    pub inner: MsgbusServiceClient<Channel>,
    default_origin: Option<pb::NodeId>,
}

impl MsgbusClient {
    /// Connects eagerly, as the original's `connect` does.
    pub async fn connect(endpoint: impl AsRef<str>) -> Result<Self> {
        let inner = MsgbusServiceClient::connect(endpoint.as_ref().to_string())
            .await
            .map_err(SdkError::Transport)?;
        Ok(Self::from_channel_client(inner))
    }

    /// A client over an already configured channel (TLS).
    pub fn from_channel_client(inner: MsgbusServiceClient<Channel>) -> Self {
        MsgbusClient {
            inner,
            default_origin: None,
        }
    }

    /// Sets the origin sent with every write.
    pub fn with_default_origin(mut self, origin: pb::NodeId) -> Self {
        self.default_origin = Some(origin);
        self
    }

    pub async fn health(&mut self) -> Result<String> {
        Ok(self
            .inner
            .health(pb::HealthRequest {})
            .await?
            .into_inner()
            .status)
    }

    pub async fn ready(&mut self) -> Result<pb::ReadyResponse> {
        Ok(self.inner.ready(pb::ReadyRequest {}).await?.into_inner())
    }

    pub async fn publish(
        &mut self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<pb::MessageEnvelope> {
        self.publish_with_headers(topic, payload, BTreeMap::new())
            .await
    }

    pub async fn publish_with_headers(
        &mut self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        headers: BTreeMap<String, String>,
    ) -> Result<pb::MessageEnvelope> {
        let request = pb::PublishRequest {
            topic: topic.to_string(),
            origin: self.default_origin.clone(),
            payload: payload.into(),
            headers,
            idempotency_key: String::new(),
        };
        required(
            self.inner.publish(request).await?.into_inner().message,
            "publish",
        )
    }

    /// Reads one page into memory, skipping responses without a message.
    pub async fn fetch(
        &mut self,
        topic: &str,
        origin: Option<pb::NodeId>,
        from_head_id: u64,
        limit: u32,
    ) -> Result<Vec<pb::MessageEnvelope>> {
        let request = pb::FetchRequest {
            topic: topic.to_string(),
            origin: origin.or_else(|| self.default_origin.clone()),
            from_head_id,
            limit,
            max_messages_per_response: 0,
        };
        let mut stream = self.inner.fetch(request).await?.into_inner();
        let mut messages = Vec::new();
        while let Some(response) = stream.message().await? {
            messages.extend(response.message);
        }
        Ok(messages)
    }

    /// One replay-then-live stream with the raw options (the server normalises them).
    pub async fn subscribe_with_options(
        &mut self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<Streaming<pb::SubscribeResponse>> {
        let request = pb::SubscribeRequest {
            topic: topic.to_string(),
            origin: options.origin.or_else(|| self.default_origin.clone()),
            from_head_id: options.from_head_id,
            replay_limit: options.replay_limit,
            max_messages_per_response: 0,
            topic_pattern: String::new(),
            origin_pattern: String::new(),
            resume_after: Vec::new(),
        };
        Ok(self.inner.subscribe(request).await?.into_inner())
    }

    pub async fn subscribe(
        &mut self,
        topic: &str,
        origin: Option<pb::NodeId>,
        from_head_id: u64,
    ) -> Result<Streaming<pb::SubscribeResponse>> {
        let options = SubscribeOptions {
            origin,
            from_head_id,
            ..SubscribeOptions::default()
        };
        self.subscribe_with_options(topic, options).await
    }

    /// The original's reconnecting subscription; it connects on the first `next_message`.
    pub fn subscribe_reconnecting_with_options(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> ResilientSubscription {
        ResilientSubscription {
            client: self.clone(),
            topic: topic.to_string(),
            next_head_id: options.from_head_id.max(1),
            options,
            stream: None,
            opens: Vec::new(),
        }
    }

    pub async fn get_head(
        &mut self,
        topic: &str,
        origin: Option<pb::NodeId>,
    ) -> Result<pb::GetHeadResponse> {
        let origin = origin.or_else(|| self.default_origin.clone());
        Ok(self
            .inner
            .get_head(pb::GetHeadRequest {
                topic: topic.to_string(),
                origin,
            })
            .await?
            .into_inner())
    }

    pub async fn list_heads(&mut self) -> Result<Vec<pb::TopicHead>> {
        Ok(self
            .inner
            // As the original: no page or cursor field, so every head in one response.
            .list_heads(pb::ListHeadsRequest {
                page_size: 0,
                page_token: String::new(),
                changed_since: String::new(),
            })
            .await?
            .into_inner()
            .heads)
    }

    pub async fn list_peer_sync_states(&mut self) -> Result<Vec<pb::PeerSyncState>> {
        Ok(self
            .inner
            // As the original: neither page field, so every state in one response.
            .list_peer_sync_states(pb::ListPeerSyncStatesRequest {
                page_size: 0,
                page_token: String::new(),
            })
            .await?
            .into_inner()
            .states)
    }

    /// Tombstones `[from, to]` and returns the deleted_count.
    pub async fn delete_range(
        &mut self,
        topic: &str,
        origin: Option<pb::NodeId>,
        from: u64,
        to: u64,
    ) -> Result<u64> {
        let request = pb::DeleteRangeRequest {
            topic: topic.to_string(),
            origin: origin.or_else(|| self.default_origin.clone()),
            from_head_id: from,
            to_head_id: to,
        };
        Ok(self
            .inner
            .delete_range(request)
            .await?
            .into_inner()
            .deleted_count)
    }

    pub async fn enqueue_fifo_with_headers(
        &mut self,
        queue: &str,
        topic: &str,
        target: Option<pb::NodeId>,
        payload: impl Into<Vec<u8>>,
        headers: BTreeMap<String, String>,
    ) -> Result<pb::FifoMessage> {
        let request = pb::EnqueueFifoRequest {
            queue: queue.to_string(),
            topic: topic.to_string(),
            source: self.default_origin.clone(),
            target,
            payload: payload.into(),
            headers,
        };
        required(
            self.inner.enqueue_fifo(request).await?.into_inner().message,
            "fifo",
        )
    }

    pub async fn peek_fifo(&mut self, queue: &str) -> Result<pb::FifoMessage> {
        let request = pb::PeekFifoRequest {
            queue: queue.to_string(),
        };
        required(
            self.inner.peek_fifo(request).await?.into_inner().message,
            "fifo",
        )
    }

    pub async fn ack_fifo(&mut self, queue: &str, message_id: &str) -> Result<bool> {
        let request = pb::AckFifoRequest {
            queue: queue.to_string(),
            message_id: message_id.to_string(),
        };
        Ok(self.inner.ack_fifo(request).await?.into_inner().accepted)
    }

    pub async fn reject_fifo(&mut self, queue: &str, message_id: &str) -> Result<bool> {
        let request = pb::RejectFifoRequest {
            queue: queue.to_string(),
            message_id: message_id.to_string(),
        };
        Ok(self.inner.reject_fifo(request).await?.into_inner().accepted)
    }
}

/// The message a response must carry, or the original's protocol error.
fn required<T>(message: Option<T>, what: &str) -> Result<T> {
    message.ok_or_else(|| SdkError::Protocol(format!("server returned empty {what} response")))
}

fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Cancelled
    )
}

/// The original SDK's reconnecting subscription: fixed delay, unlimited retries, resume at the
/// last head_id + 1.
pub struct ResilientSubscription {
    client: MsgbusClient,
    topic: String,
    options: SubscribeOptions,
    next_head_id: u64,
    stream: Option<Streaming<pb::SubscribeResponse>>,
    /// Every stream this subscription opened: its from_head_id and when (for the checks).
    pub opens: Vec<(u64, Instant)>,
}

impl ResilientSubscription {
    pub async fn next_message(&mut self) -> Result<pb::MessageEnvelope> {
        loop {
            if self.stream.is_none() {
                self.opens.push((self.next_head_id, Instant::now()));
                let options = SubscribeOptions {
                    from_head_id: self.next_head_id,
                    ..self.options.clone()
                };
                match self
                    .client
                    .subscribe_with_options(&self.topic, options)
                    .await
                {
                    Ok(stream) => self.stream = Some(stream),
                    Err(SdkError::Status(status)) if retryable(&status) => {
                        tokio::time::sleep(self.options.reconnect_delay).await;
                        continue;
                    }
                    Err(error) => return Err(error),
                }
            }
            let stream = self.stream.as_mut().expect("opened above");
            match stream.message().await {
                Ok(Some(response)) => {
                    let message = required(response.message, "subscribe")?;
                    self.next_head_id = message.head_id.saturating_add(1);
                    return Ok(message);
                }
                Ok(None) => {}
                Err(status) if retryable(&status) => {}
                Err(status) => return Err(SdkError::Status(status)),
            }
            self.stream = None;
            tokio::time::sleep(self.options.reconnect_delay).await;
        }
    }
}
