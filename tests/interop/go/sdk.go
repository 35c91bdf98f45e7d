package main

// The calls of the original Go SDK (go-sdk/msgbus/client.go), reproduced with the same shapes
// and defaults so that this program drives msgbusd exactly the way its users' programs do:
// Dial waits for the connection to become ready, a nil origin means the default origin, and
// SubscribeIterator reconnects after a fixed delay, resuming at the last head_id + 1.

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	msgbusv1 "msgbus.test/interop/gen/msgbus/v1"
)

// DefaultReplayLimit is the original SDK's replay page size.
const DefaultReplayLimit uint32 = 100

// DefaultReconnectDelay is the original SDK's fixed delay between subscription attempts.
const DefaultReconnectDelay = 250 * time.Millisecond

// Client is a msgbus client over one gRPC connection.
type Client struct {
	conn          *grpc.ClientConn
	rpc           msgbusv1.MsgbusServiceClient
	defaultOrigin *msgbusv1.NodeId
}

// Dial connects and waits until the connection is ready, as the original SDK's Dial does.
func Dial(ctx context.Context, target string, opts ...grpc.DialOption) (*Client, error) {
	if ctx == nil {
		return nil, errors.New("msgbus: nil context")
	}
	client, err := DialLazy(target, opts...)
	if err != nil {
		return nil, err
	}
	if err := client.waitReady(ctx); err != nil {
		_ = client.Close()
		return nil, err
	}
	return client, nil
}

// DialLazy creates the connection without waiting; no options means insecure credentials.
func DialLazy(target string, opts ...grpc.DialOption) (*Client, error) {
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, err
	}
	conn.Connect()
	return &Client{conn: conn, rpc: msgbusv1.NewMsgbusServiceClient(conn)}, nil
}

func (c *Client) waitReady(ctx context.Context) error {
	for {
		state := c.conn.GetState()
		if state == connectivity.Ready {
			return nil
		}
		if !c.conn.WaitForStateChange(ctx, state) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return errors.New("msgbus: connection did not become ready")
		}
	}
}

// Close closes the connection; it is nil-safe.
func (c *Client) Close() error {
	if c == nil || c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// WithDefaultOrigin sets the origin used when a call passes none.
func (c *Client) WithDefaultOrigin(origin *msgbusv1.NodeId) *Client {
	c.defaultOrigin = origin
	return c
}

func (c *Client) origin(origin *msgbusv1.NodeId) *msgbusv1.NodeId {
	if origin != nil {
		return origin
	}
	return c.defaultOrigin
}

// Health returns the daemon's status string.
func (c *Client) Health(ctx context.Context) (string, error) {
	resp, err := c.rpc.Health(ctx, &msgbusv1.HealthRequest{})
	if err != nil {
		return "", err
	}
	return resp.GetStatus(), nil
}

// Ready reports whether the daemon's store answers.
func (c *Client) Ready(ctx context.Context) (*msgbusv1.ReadyResponse, error) {
	return c.rpc.Ready(ctx, &msgbusv1.ReadyRequest{})
}

// Publish appends a message to the default origin's log of topic.
func (c *Client) Publish(ctx context.Context, topic string, payload []byte) (*msgbusv1.MessageEnvelope, error) {
	return c.PublishWithHeaders(ctx, topic, payload, nil)
}

// PublishWithHeaders is Publish with application headers.
func (c *Client) PublishWithHeaders(ctx context.Context, topic string, payload []byte, headers map[string]string) (*msgbusv1.MessageEnvelope, error) {
	resp, err := c.rpc.Publish(ctx, &msgbusv1.PublishRequest{
		Topic: topic, Origin: c.defaultOrigin, Payload: payload, Headers: headers,
	})
	if err != nil {
		return nil, err
	}
	if resp.GetMessage() == nil {
		return nil, errors.New("msgbus: empty publish response")
	}
	return resp.GetMessage(), nil
}

// Fetch reads one page of a log into memory.
func (c *Client) Fetch(ctx context.Context, topic string, origin *msgbusv1.NodeId, fromHeadID uint64, limit uint32) ([]*msgbusv1.MessageEnvelope, error) {
	stream, err := c.rpc.Fetch(ctx, &msgbusv1.FetchRequest{
		Topic: topic, Origin: c.origin(origin), FromHeadId: fromHeadID, Limit: limit,
	})
	if err != nil {
		return nil, err
	}
	var messages []*msgbusv1.MessageEnvelope
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return messages, nil
		}
		if err != nil {
			return nil, err
		}
		if resp.GetMessage() != nil {
			messages = append(messages, resp.GetMessage())
		}
	}
}

// SubscribeOptions are the original SDK's subscription options.
type SubscribeOptions struct {
	Origin         *msgbusv1.NodeId
	FromHeadID     uint64
	ReplayLimit    uint32
	ReconnectDelay time.Duration
}

func (c *Client) defaultSubscribeOptions(opts SubscribeOptions) SubscribeOptions {
	if opts.Origin == nil {
		opts.Origin = c.defaultOrigin
	}
	if opts.FromHeadID == 0 {
		opts.FromHeadID = 1
	}
	if opts.ReplayLimit == 0 {
		opts.ReplayLimit = DefaultReplayLimit
	}
	if opts.ReconnectDelay == 0 {
		opts.ReconnectDelay = DefaultReconnectDelay
	}
	return opts
}

// Subscribe opens one replay-then-live stream.
func (c *Client) Subscribe(ctx context.Context, topic string, origin *msgbusv1.NodeId, fromHeadID uint64) (msgbusv1.MsgbusService_SubscribeClient, error) {
	return c.SubscribeWithOptions(ctx, topic, SubscribeOptions{Origin: origin, FromHeadID: fromHeadID})
}

// SubscribeWithOptions opens one stream with the given options (defaults filled in).
func (c *Client) SubscribeWithOptions(ctx context.Context, topic string, opts SubscribeOptions) (msgbusv1.MsgbusService_SubscribeClient, error) {
	opts = c.defaultSubscribeOptions(opts)
	return c.rpc.Subscribe(ctx, &msgbusv1.SubscribeRequest{
		Topic: topic, Origin: opts.Origin, FromHeadId: opts.FromHeadID, ReplayLimit: opts.ReplayLimit,
	})
}

// SubscribeIterator is the original SDK's reconnecting subscription.
type SubscribeIterator struct {
	client *Client
	ctx    context.Context
	topic  string
	opts   SubscribeOptions
	stream msgbusv1.MsgbusService_SubscribeClient
	// OnOpen, when set, is told the from_head_id of every stream it opens (for the checks).
	OnOpen func(fromHeadID uint64)
}

// SubscribeIterator returns a reconnecting subscription; it connects on the first Recv.
func (c *Client) SubscribeIterator(ctx context.Context, topic string, opts SubscribeOptions) *SubscribeIterator {
	if ctx == nil {
		ctx = context.Background()
	}
	return &SubscribeIterator{client: c, ctx: ctx, topic: topic, opts: c.defaultSubscribeOptions(opts)}
}

func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.Canceled:
		return true
	}
	return false
}

func (it *SubscribeIterator) wait() error {
	timer := time.NewTimer(it.opts.ReconnectDelay)
	defer timer.Stop()
	select {
	case <-it.ctx.Done():
		return it.ctx.Err()
	case <-timer.C:
		return nil
	}
}

// Recv returns the next message, reconnecting after retryable errors and at stream end.
func (it *SubscribeIterator) Recv() (*msgbusv1.MessageEnvelope, error) {
	for {
		if it.stream == nil {
			if it.OnOpen != nil {
				it.OnOpen(it.opts.FromHeadID)
			}
			stream, err := it.client.SubscribeWithOptions(it.ctx, it.topic, it.opts)
			if err != nil {
				if retryable(err) {
					if werr := it.wait(); werr != nil {
						return nil, werr
					}
					continue
				}
				return nil, err
			}
			it.stream = stream
		}
		resp, err := it.stream.Recv()
		if err == nil {
			if resp.GetMessage() == nil {
				return nil, errors.New("msgbus: empty subscribe response")
			}
			it.opts.FromHeadID = resp.GetMessage().GetHeadId() + 1
			return resp.GetMessage(), nil
		}
		if errors.Is(err, io.EOF) || retryable(err) {
			it.stream = nil
			if werr := it.wait(); werr != nil {
				return nil, werr
			}
			continue
		}
		return nil, err
	}
}

// GetHead returns the head of a log.
func (c *Client) GetHead(ctx context.Context, topic string, origin *msgbusv1.NodeId) (*msgbusv1.GetHeadResponse, error) {
	return c.rpc.GetHead(ctx, &msgbusv1.GetHeadRequest{Topic: topic, Origin: c.origin(origin)})
}

// ListHeads returns every log head.
func (c *Client) ListHeads(ctx context.Context) ([]*msgbusv1.TopicHead, error) {
	resp, err := c.rpc.ListHeads(ctx, &msgbusv1.ListHeadsRequest{})
	if err != nil {
		return nil, err
	}
	return resp.GetHeads(), nil
}

// ListPeerSyncStates returns every persisted sync state.
func (c *Client) ListPeerSyncStates(ctx context.Context) ([]*msgbusv1.PeerSyncState, error) {
	resp, err := c.rpc.ListPeerSyncStates(ctx, &msgbusv1.ListPeerSyncStatesRequest{})
	if err != nil {
		return nil, err
	}
	return resp.GetStates(), nil
}

// DeleteRange tombstones [from, to] of a local log and returns how many messages it deleted.
func (c *Client) DeleteRange(ctx context.Context, topic string, origin *msgbusv1.NodeId, from, to uint64) (uint64, error) {
	resp, err := c.rpc.DeleteRange(ctx, &msgbusv1.DeleteRangeRequest{
		Topic: topic, Origin: c.origin(origin), FromHeadId: from, ToHeadId: to,
	})
	if err != nil {
		return 0, err
	}
	return resp.GetDeletedCount(), nil
}

// EnqueueFIFO appends a message to a local FIFO queue.
func (c *Client) EnqueueFIFO(ctx context.Context, queue, topic string, target *msgbusv1.NodeId, payload []byte) (*msgbusv1.FifoMessage, error) {
	return c.EnqueueFIFOWithHeaders(ctx, queue, topic, target, payload, nil)
}

// EnqueueFIFOWithHeaders is EnqueueFIFO with application headers.
func (c *Client) EnqueueFIFOWithHeaders(ctx context.Context, queue, topic string, target *msgbusv1.NodeId, payload []byte, headers map[string]string) (*msgbusv1.FifoMessage, error) {
	resp, err := c.rpc.EnqueueFifo(ctx, &msgbusv1.EnqueueFifoRequest{
		Queue: queue, Topic: topic, Source: c.defaultOrigin, Target: target, Payload: payload, Headers: headers,
	})
	if err != nil {
		return nil, err
	}
	if resp.GetMessage() == nil {
		return nil, errors.New("msgbus: empty fifo response")
	}
	return resp.GetMessage(), nil
}

// PeekFIFO returns the front of a queue (NOT_FOUND when it is empty).
func (c *Client) PeekFIFO(ctx context.Context, queue string) (*msgbusv1.FifoMessage, error) {
	resp, err := c.rpc.PeekFifo(ctx, &msgbusv1.PeekFifoRequest{Queue: queue})
	if err != nil {
		return nil, err
	}
	return resp.GetMessage(), nil
}

// AckFIFO removes the front message when messageID names it.
func (c *Client) AckFIFO(ctx context.Context, queue, messageID string) (bool, error) {
	resp, err := c.rpc.AckFifo(ctx, &msgbusv1.AckFifoRequest{Queue: queue, MessageId: messageID})
	if err != nil {
		return false, err
	}
	return resp.GetAccepted(), nil
}

// RejectFIFO counts a failed attempt on the front message when messageID names it.
func (c *Client) RejectFIFO(ctx context.Context, queue, messageID string) (bool, error) {
	resp, err := c.rpc.RejectFifo(ctx, &msgbusv1.RejectFifoRequest{Queue: queue, MessageId: messageID})
	if err != nil {
		return false, err
	}
	return resp.GetAccepted(), nil
}
