package main

// Every RPC of the original contract, plus this project's extensions (PublishBatch and response
// packing), called through the original SDK's shapes against one daemon.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	msgbusv1 "msgbus.test/interop/gen/msgbus/v1"
)

func runContract(args []string) {
	flags, addr := newFlags("contract")
	nodeFlag := flags.String("node", "", "the daemon's node, tenant/bl/device")
	maxPayload := flags.Int("max-payload", 0, "the daemon's --max-payload-bytes")
	_ = flags.Parse(args)
	check(*addr != "" && *nodeFlag != "" && *maxPayload > 0, "contract needs -addr, -node and -max-payload")
	node := parseNode(*nodeFlag)

	ctx, cancel := deadline(120)
	defer cancel()
	client, err := Dial(ctx, *addr)
	noErr(err, "Dial")
	defer client.Close()
	ok("Dial %s: connection ready", *addr)

	topic := fmt.Sprintf("interop.go.%d", time.Now().UnixNano())
	checkHealth(ctx, client, node)
	checkPublishAndFetch(ctx, client, node, topic)
	checkSubscribeReplayThenLive(ctx, client, topic)
	checkHeads(ctx, client, node, topic)
	checkDeleteRange(ctx, client, node, topic)
	checkFifo(ctx, client, node, topic)
	checkInvalidInput(ctx, client, node, *maxPayload)
	checkExtensions(ctx, client, node)
}

func checkHealth(ctx context.Context, client *Client, node *msgbusv1.NodeId) {
	health, err := client.Health(ctx)
	noErr(err, "Health")
	check(health == "SERVING", "Health = %q, want SERVING", health)
	reply, err := client.rpc.Health(ctx, &msgbusv1.HealthRequest{})
	noErr(err, "Health")
	check(proto.Equal(reply.GetNode(), node), "Health node = %v, want %v", reply.GetNode(), node)
	ok("Health: SERVING as %s", nodeKey(node))
	ready, err := client.Ready(ctx)
	noErr(err, "Ready")
	check(ready.GetReady() && ready.GetStatus() == "READY" && ready.GetError() == "",
		"Ready = %v, want ready READY without error", ready)
	check(proto.Equal(ready.GetNode(), node), "Ready node = %v", ready.GetNode())
	ok("Ready: READY")
}

func checkPublishAndFetch(ctx context.Context, client *Client, node *msgbusv1.NodeId, topic string) {
	for i := uint64(1); i <= 3; i++ {
		headers := map[string]string{"n": fmt.Sprint(i), "kind": "interop"}
		message, err := client.PublishWithHeaders(ctx, topic, []byte(fmt.Sprintf("m-%d", i)), headers)
		noErr(err, "Publish")
		check(message.GetHeadId() == i, "Publish #%d head_id = %d", i, message.GetHeadId())
		check(message.GetTopic() == topic && proto.Equal(message.GetOrigin(), node),
			"Publish envelope names %s %v", message.GetTopic(), message.GetOrigin())
		check(len(message.GetId()) == 36 && message.GetCreatedAtMs() > 0 && !message.GetDeleted(),
			"Publish envelope id=%q created_at_ms=%d deleted=%v", message.GetId(), message.GetCreatedAtMs(), message.GetDeleted())
	}
	ok("Publish: head_ids 1, 2, 3 with server ids and the local origin")

	messages, err := client.Fetch(ctx, topic, nil, 0, 0)
	noErr(err, "Fetch")
	check(slices.Equal(headIDs(messages), []uint64{1, 2, 3}), "Fetch head_ids = %v", headIDs(messages))
	for _, m := range messages {
		check(string(m.GetPayload()) == fmt.Sprintf("m-%d", m.GetHeadId()), "Fetch payload %q", m.GetPayload())
		check(m.GetHeaders()["n"] == fmt.Sprint(m.GetHeadId()) && m.GetHeaders()["kind"] == "interop",
			"Fetch headers %v", m.GetHeaders())
	}
	page, err := client.Fetch(ctx, topic, node, 2, 1)
	noErr(err, "Fetch page")
	check(slices.Equal(headIDs(page), []uint64{2}), "Fetch from 2 limit 1 = %v", headIDs(page))
	unknown, err := client.Fetch(ctx, topic+".unknown", nil, 1, 10)
	noErr(err, "Fetch unknown")
	check(len(unknown) == 0, "Fetch of an unknown log returned %d messages", len(unknown))
	ok("Fetch: from 0 (as 1), paging with limit, an unknown log is an empty stream")
}

func checkSubscribeReplayThenLive(ctx context.Context, client *Client, topic string) {
	subCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := client.Subscribe(subCtx, topic, nil, 2)
	noErr(err, "Subscribe")
	var got []uint64
	for len(got) < 2 {
		resp, err := stream.Recv()
		noErr(err, "Subscribe replay")
		got = append(got, resp.GetMessage().GetHeadId())
	}
	_, err = client.Publish(ctx, topic, []byte("m-4"))
	noErr(err, "Publish while subscribed")
	resp, err := stream.Recv()
	noErr(err, "Subscribe live")
	got = append(got, resp.GetMessage().GetHeadId())
	check(slices.Equal(got, []uint64{2, 3, 4}), "Subscribe from 2 delivered %v, want replay 2, 3 then live 4", got)
	check(string(resp.GetMessage().GetPayload()) == "m-4", "live payload %q", resp.GetMessage().GetPayload())
	ok("Subscribe: replay 2, 3 then live 4, in order, no duplicate")
}

func checkHeads(ctx context.Context, client *Client, node *msgbusv1.NodeId, topic string) {
	head, err := client.GetHead(ctx, topic, nil)
	noErr(err, "GetHead")
	check(head.GetHeadId() == 4 && head.GetFound(), "GetHead = %v, want 4 found", head)
	missing, err := client.GetHead(ctx, topic+".none", nil)
	noErr(err, "GetHead unknown")
	check(missing.GetHeadId() == 0 && !missing.GetFound(), "GetHead unknown = %v", missing)
	ok("GetHead: 4 found; an unknown log is {0, false} with status OK")

	heads, err := client.ListHeads(ctx)
	noErr(err, "ListHeads")
	check(findHead(heads, topic, node) == 4, "ListHeads has no head 4 for %s", topic)
	for i := 1; i < len(heads); i++ {
		a, b := heads[i-1], heads[i]
		check(a.GetTopic() < b.GetTopic() || (a.GetTopic() == b.GetTopic() && nodeKey(a.GetOrigin()) < nodeKey(b.GetOrigin())),
			"ListHeads not ordered by topic, origin at %d", i)
	}
	ok("ListHeads: %d heads ordered by topic and origin, %s at 4", len(heads), topic)

	states, err := client.ListPeerSyncStates(ctx)
	noErr(err, "ListPeerSyncStates")
	check(len(states) == 0, "ListPeerSyncStates of a daemon without peers = %d states", len(states))
	ok("ListPeerSyncStates: empty without peers")
}

func checkDeleteRange(ctx context.Context, client *Client, node *msgbusv1.NodeId, topic string) {
	markersBefore := markerHead(ctx, client, node)
	count, err := client.DeleteRange(ctx, topic, nil, 2, 3)
	noErr(err, "DeleteRange")
	check(count == 2, "DeleteRange 2..3 deleted %d, want 2", count)
	messages, err := client.Fetch(ctx, topic, nil, 1, 100)
	noErr(err, "Fetch after DeleteRange")
	var flags []bool
	for _, m := range messages {
		flags = append(flags, m.GetDeleted())
		if m.GetDeleted() {
			check(len(m.GetPayload()) == 0 && len(m.GetHeaders()) == 0, "deleted #%d keeps its payload or headers", m.GetHeadId())
		}
	}
	check(slices.Equal(flags, []bool{false, true, true, false}), "deleted flags = %v, want [false true true false]", flags)
	again, err := client.DeleteRange(ctx, topic, nil, 1, 3)
	noErr(err, "DeleteRange again")
	check(again == 1, "DeleteRange 1..3 after 2..3 counted %d, want 1 (already deleted are not counted)", again)
	ok("DeleteRange: counts, deleted flags [f t t f], payloads erased, repeats not counted")

	markerTopic := "$msgbus.delete"
	markers, err := client.Fetch(ctx, markerTopic, nil, markersBefore+1, 100)
	noErr(err, "Fetch markers")
	check(len(markers) == 2, "DeleteRange wrote %d markers, want 2", len(markers))
	var marker deleteMarker
	noErr(json.Unmarshal(markers[0].GetPayload(), &marker), "marker JSON")
	check(marker.Topic == topic && marker.FromHeadID == 2 && marker.ToHeadID == 3 && marker.Origin.DeviceID == node.GetDeviceId(),
		"marker = %+v", marker)
	ok("$msgbus.delete: one marker per DeleteRange, in the original's JSON")
}

func checkFifo(ctx context.Context, client *Client, node *msgbusv1.NodeId, topic string) {
	queue := topic + ".queue"
	first, err := client.EnqueueFIFOWithHeaders(ctx, queue, topic, node, []byte("job-1"), map[string]string{"k": "v"})
	noErr(err, "EnqueueFifo")
	second, err := client.EnqueueFIFO(ctx, queue, topic, node, []byte("job-2"))
	noErr(err, "EnqueueFifo")
	check(first.GetSequence() == 1 && second.GetSequence() == 2, "sequences %d, %d", first.GetSequence(), second.GetSequence())
	check(proto.Equal(first.GetSource(), node) && first.GetHeaders()["k"] == "v" && first.GetAttempts() == 0,
		"EnqueueFifo message = %v", first)
	front, err := client.PeekFIFO(ctx, queue)
	noErr(err, "PeekFifo")
	check(front.GetId() == first.GetId(), "PeekFifo front = %s, want %s", front.GetId(), first.GetId())
	accepted, err := client.AckFIFO(ctx, queue, second.GetId())
	noErr(err, "AckFifo of the second")
	check(!accepted, "AckFifo of a message behind the front was accepted")
	accepted, err = client.RejectFIFO(ctx, queue, first.GetId())
	noErr(err, "RejectFifo")
	check(accepted, "RejectFifo of the front was refused")
	front, err = client.PeekFIFO(ctx, queue)
	noErr(err, "PeekFifo")
	check(front.GetId() == first.GetId() && front.GetAttempts() == 1, "after reject the front is %s attempts %d", front.GetId(), front.GetAttempts())
	for _, message := range []*msgbusv1.FifoMessage{first, second} {
		accepted, err = client.AckFIFO(ctx, queue, message.GetId())
		noErr(err, "AckFifo")
		check(accepted, "AckFifo of the front #%d was refused", message.GetSequence())
	}
	_, err = client.PeekFIFO(ctx, queue)
	check(status.Code(err) == codes.NotFound, "PeekFifo of an empty queue: %v, want NOT_FOUND", err)
	ok("FIFO: sequences 1, 2; only the front acks; reject keeps it at the front; empty is NOT_FOUND")
}

func checkInvalidInput(ctx context.Context, client *Client, node *msgbusv1.NodeId, maxPayload int) {
	foreign := &msgbusv1.NodeId{TenantId: "tenant", BlName: "default", DeviceId: "someone-else"}
	cases := []struct {
		what string
		call func() error
		want codes.Code
	}{
		{"Publish empty topic", func() error { _, err := client.Publish(ctx, "", []byte("x")); return err }, codes.InvalidArgument},
		{"Publish $msgbus.delete", func() error { _, err := client.Publish(ctx, "$msgbus.delete", []byte("x")); return err }, codes.PermissionDenied},
		{"Publish $msgbus.other", func() error { _, err := client.Publish(ctx, "$msgbus.other", []byte("x")); return err }, codes.PermissionDenied},
		{"Publish foreign origin", func() error {
			_, err := client.rpc.Publish(ctx, &msgbusv1.PublishRequest{Topic: "t", Origin: foreign, Payload: []byte("x")})
			return err
		}, codes.PermissionDenied},
		{"Publish oversized payload", func() error {
			_, err := client.Publish(ctx, "t", make([]byte, maxPayload+1))
			return err
		}, codes.InvalidArgument},
		{"DeleteRange from > to", func() error { _, err := client.DeleteRange(ctx, "t", nil, 3, 2); return err }, codes.InvalidArgument},
		{"DeleteRange foreign origin", func() error { _, err := client.DeleteRange(ctx, "t", foreign, 1, 2); return err }, codes.PermissionDenied},
		{"EnqueueFifo without target", func() error { _, err := client.EnqueueFIFO(ctx, "q", "t", nil, nil); return err }, codes.InvalidArgument},
		{"Fetch empty topic", func() error { _, err := client.Fetch(ctx, "", nil, 1, 1); return err }, codes.InvalidArgument},
	}
	for _, c := range cases {
		err := c.call()
		check(status.Code(err) == c.want, "%s: %v, want %s", c.what, err, c.want)
	}
	// An invalid request stored nothing.
	head, err := client.GetHead(ctx, "t", node)
	noErr(err, "GetHead t")
	check(!head.GetFound(), "a refused publish stored head %d", head.GetHeadId())
	ok("invalid input: %d refusals with the contract's status codes, nothing stored", len(cases))
}

// checkExtensions exercises this project's additions to the contract from Go.
func checkExtensions(ctx context.Context, client *Client, node *msgbusv1.NodeId) {
	topic := fmt.Sprintf("interop.go.batch.%d", time.Now().UnixNano())
	batch, err := client.rpc.PublishBatch(ctx, &msgbusv1.PublishBatchRequest{Entries: []*msgbusv1.PublishRequest{
		{Topic: topic, Payload: []byte("b-1")}, {Topic: topic, Payload: []byte("b-2")}, {Topic: topic, Payload: []byte("b-3")},
	}})
	noErr(err, "PublishBatch")
	check(slices.Equal(headIDs(batch.GetMessages()), []uint64{1, 2, 3}), "PublishBatch head_ids %v", headIDs(batch.GetMessages()))
	_, err = client.rpc.PublishBatch(ctx, &msgbusv1.PublishBatchRequest{Entries: []*msgbusv1.PublishRequest{
		{Topic: topic, Payload: []byte("ok")}, {Topic: "", Payload: []byte("bad")},
	}})
	check(status.Code(err) == codes.InvalidArgument, "PublishBatch with an invalid entry: %v", err)
	head, err := client.GetHead(ctx, topic, node)
	noErr(err, "GetHead batch")
	check(head.GetHeadId() == 3, "a refused batch stored something: head %d", head.GetHeadId())
	ok("PublishBatch: consecutive head_ids; an invalid entry refuses the whole batch")

	stream, err := client.rpc.Fetch(ctx, &msgbusv1.FetchRequest{Topic: topic, FromHeadId: 1, MaxMessagesPerResponse: 10})
	noErr(err, "packed Fetch")
	var packed []uint64
	responses := 0
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		noErr(err, "packed Fetch")
		responses++
		check(resp.GetMessage() == nil, "packed Fetch also set message")
		packed = append(packed, headIDs(resp.GetMessages())...)
	}
	check(slices.Equal(packed, []uint64{1, 2, 3}) && responses == 1, "packed Fetch gave %v in %d responses", packed, responses)
	ok("Fetch max_messages_per_response: 3 messages in one response")
}

func headIDs(messages []*msgbusv1.MessageEnvelope) []uint64 {
	ids := make([]uint64, 0, len(messages))
	for _, m := range messages {
		ids = append(ids, m.GetHeadId())
	}
	return ids
}

// findHead is the head_id of the log's ListHeads entry, 0 when it has none.
func findHead(heads []*msgbusv1.TopicHead, topic string, origin *msgbusv1.NodeId) uint64 {
	return findTopicHead(heads, topic, origin).GetHeadId() // nil-safe getter: 0 without an entry
}

// findTopicHead is the log's ListHeads entry, nil when it has none.
func findTopicHead(heads []*msgbusv1.TopicHead, topic string, origin *msgbusv1.NodeId) *msgbusv1.TopicHead {
	for _, h := range heads {
		if h.GetTopic() == topic && proto.Equal(h.GetOrigin(), origin) {
			return h
		}
	}
	return nil
}

func markerHead(ctx context.Context, client *Client, node *msgbusv1.NodeId) uint64 {
	head, err := client.GetHead(ctx, "$msgbus.delete", node)
	noErr(err, "GetHead $msgbus.delete")
	return head.GetHeadId()
}
