package main

// The retention extension (issue 14), as a client that knows it would read it: against a daemon
// started with --retention 'PATTERN:max-messages=N', a log of the pattern keeps its newest N
// messages, GetHead and ListHeads say where it now starts and how many bytes it holds, and the
// first Fetch or Subscribe response after the trimmed prefix names that first head, so a client
// can tell a trim from a gap. A log outside the pattern never carries first_head_id on a read.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	msgbusv1 "msgbus.test/interop/gen/msgbus/v1"
)

// packedPerResponse is the max_messages_per_response of the packed reads: small enough that
// the held messages span several responses, so only the first may carry first_head_id.
const packedPerResponse = 2

// readResponse is what one Fetch or Subscribe response said: the heads it carried and its
// first_head_id (0 when unset).
type readResponse struct {
	FirstHeadID uint64   `json:"first_head_id"`
	Heads       []uint64 `json:"heads"`
}

// logHead is a head as GetHead or ListHeads reported it.
type logHead struct {
	HeadID      uint64 `json:"head_id"`
	FirstHeadID uint64 `json:"first_head_id"`
	Bytes       uint64 `json:"bytes"`
}

// retentionSummary is the one JSON line the command prints for pytest to assert on.
type retentionSummary struct {
	Topic        string         `json:"topic"`
	PayloadSizes []int          `json:"payload_sizes"` // by head_id - 1, as published
	GetHead      logHead        `json:"get_head"`
	ListHeads    logHead        `json:"list_heads"`
	Fetch        []readResponse `json:"fetch"`
	FetchPacked  []readResponse `json:"fetch_packed"`
	Subscribe    []readResponse `json:"subscribe"`
	Untrimmed    untrimmedLog   `json:"untrimmed"`
}

// untrimmedLog is the same reads on a log that no retention rule matches.
type untrimmedLog struct {
	Topic       string         `json:"topic"`
	GetHead     logHead        `json:"get_head"`
	Fetch       []readResponse `json:"fetch"`
	FetchPacked []readResponse `json:"fetch_packed"`
}

// runRetentionCheck publishes to a log that the daemon's retention rule trims and to one it
// does not, waits for the trim, and checks every read that reports it.
func runRetentionCheck(args []string) {
	flags, addr := newFlags("retention-check")
	topic := flags.String("topic", "", "a topic the daemon's --retention pattern matches")
	untrimmed := flags.String("untrimmed-topic", "", "a topic no retention pattern matches")
	publish := flags.Uint64("publish", 20, "how many messages to publish to -topic")
	maxMessages := flags.Uint64("max-messages", 5, "the max-messages of the daemon's rule for -topic")
	trimTimeout := flags.Int("trim-timeout", 60, "seconds to wait for the background trim")
	_ = flags.Parse(args)
	check(*addr != "" && *topic != "" && *untrimmed != "", "retention-check needs -addr, -topic and -untrimmed-topic")
	check(*maxMessages > 0 && *publish > *maxMessages, "retention-check needs -publish (%d) > -max-messages (%d) > 0", *publish, *maxMessages)

	ctx, cancel := deadline(*trimTimeout + 120)
	defer cancel()
	client, err := Dial(ctx, *addr)
	noErr(err, "Dial")
	defer client.Close()

	summary := retentionSummary{Topic: *topic}
	var origin *msgbusv1.NodeId
	for head := uint64(1); head <= *publish; head++ {
		message, err := client.Publish(ctx, *topic, retainedPayload(head))
		noErr(err, "Publish")
		check(message.GetHeadId() == head, "Publish #%d head_id = %d", head, message.GetHeadId())
		origin = message.GetOrigin()
		summary.PayloadSizes = append(summary.PayloadSizes, len(message.GetPayload()))
	}
	for head := uint64(1); head <= 3; head++ {
		_, err := client.Publish(ctx, *untrimmed, retainedPayload(head))
		noErr(err, "Publish untrimmed")
	}
	ok("Publish: heads 1..%d to %s, 1..3 to %s", *publish, *topic, *untrimmed)

	first := *publish - *maxMessages + 1
	var held uint64
	for head := first; head <= *publish; head++ {
		held += uint64(summary.PayloadSizes[head-1])
	}
	summary.GetHead = waitForTrim(ctx, client, *topic, first, time.Duration(*trimTimeout)*time.Second)
	check(summary.GetHead.HeadID == *publish && summary.GetHead.Bytes == held,
		"GetHead after the trim = %+v, want head_id %d and bytes %d (the held payloads)", summary.GetHead, *publish, held)
	ok("GetHead: first_head_id %d, head_id %d, bytes %d (the %d held payloads)", first, *publish, held, *maxMessages)

	heads, err := client.ListHeads(ctx)
	noErr(err, "ListHeads")
	entry := findTopicHead(heads, *topic, origin)
	check(entry != nil, "ListHeads has no entry for %s", *topic)
	summary.ListHeads = logHead{HeadID: entry.GetHeadId(), FirstHeadID: entry.GetFirstHeadId(), Bytes: entry.GetBytes()}
	check(summary.ListHeads == summary.GetHead, "ListHeads entry = %+v, GetHead said %+v", summary.ListHeads, summary.GetHead)
	ok("ListHeads: %s at first_head_id %d, head_id %d, bytes %d, as GetHead", *topic, first, *publish, held)

	wantHeads := headRange(first, *publish)
	summary.Fetch = fetchResponses(ctx, client, *topic, 0)
	checkTrimReported("Fetch from 1", summary.Fetch, first, wantHeads)
	summary.FetchPacked = fetchResponses(ctx, client, *topic, packedPerResponse)
	checkTrimReported("packed Fetch from 1", summary.FetchPacked, first, wantHeads)
	ok("Fetch from 1: the first response says first_head_id %d and starts there, later ones carry 0 (one and %d per response)",
		first, packedPerResponse)

	summary.Subscribe = subscribeResponses(ctx, client, *topic, len(wantHeads))
	checkTrimReported("Subscribe from 1", summary.Subscribe, first, wantHeads)
	ok("Subscribe from 1: the first response says first_head_id %d, then %d..%d contiguous", first, first, *publish)

	summary.Untrimmed = checkUntrimmed(ctx, client, *untrimmed)
	ok("an untrimmed log: GetHead first_head_id 1, every Fetch response from 1 has first_head_id 0")

	line, err := json.Marshal(summary)
	noErr(err, "summary JSON")
	fmt.Printf("summary %s\n", line)
}

// retainedPayload is head's payload; payloads differ in length, so the held bytes tell which
// heads are held.
func retainedPayload(head uint64) []byte {
	return []byte(fmt.Sprintf("m-%d:%s", head, strings.Repeat("p", int(head))))
}

// waitForTrim polls GetHead until the log starts at first; the daemon trims in the background.
func waitForTrim(ctx context.Context, client *Client, topic string, first uint64, timeout time.Duration) logHead {
	until := time.Now().Add(timeout)
	for {
		head, err := client.GetHead(ctx, topic, nil)
		noErr(err, "GetHead")
		got := logHead{HeadID: head.GetHeadId(), FirstHeadID: head.GetFirstHeadId(), Bytes: head.GetBytes()}
		if got.FirstHeadID == first {
			check(head.GetFound(), "GetHead of a trimmed log with messages held says found=false")
			return got
		}
		check(time.Now().Before(until), "GetHead first_head_id is still %d after %v, want %d: did the daemon trim %s? (%+v)",
			got.FirstHeadID, timeout, first, topic, got)
		time.Sleep(100 * time.Millisecond)
	}
}

// fetchResponses reads the whole log from head 1; perResponse 0 is the original one-message shape.
func fetchResponses(ctx context.Context, client *Client, topic string, perResponse uint32) []readResponse {
	stream, err := client.rpc.Fetch(ctx, &msgbusv1.FetchRequest{
		Topic: topic, FromHeadId: 1, MaxMessagesPerResponse: perResponse,
	})
	noErr(err, "Fetch")
	var responses []readResponse
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return responses
		}
		noErr(err, "Fetch")
		messages := resp.GetMessages()
		if perResponse == 0 {
			check(len(messages) == 0 && resp.GetMessage() != nil, "unpacked Fetch response without exactly one message: %v", resp)
			messages = []*msgbusv1.MessageEnvelope{resp.GetMessage()}
		}
		checkPayloads("Fetch", messages)
		responses = append(responses, readResponse{FirstHeadID: resp.GetFirstHeadId(), Heads: headIDs(messages)})
	}
}

// subscribeResponses follows the log from head 1 (the original SDK's request) for count messages.
func subscribeResponses(ctx context.Context, client *Client, topic string, count int) []readResponse {
	subCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := client.Subscribe(subCtx, topic, nil, 1)
	noErr(err, "Subscribe")
	var responses []readResponse
	for received := 0; received < count; received++ {
		resp, err := stream.Recv()
		noErr(err, "Subscribe")
		check(resp.GetMessage() != nil, "Subscribe response without a message: %v", resp)
		checkPayloads("Subscribe", []*msgbusv1.MessageEnvelope{resp.GetMessage()})
		responses = append(responses, readResponse{FirstHeadID: resp.GetFirstHeadId(), Heads: []uint64{resp.GetMessage().GetHeadId()}})
	}
	return responses
}

// checkTrimReported: the responses carry exactly wantHeads in order, the first says the log
// starts at first, and no later one carries first_head_id.
func checkTrimReported(what string, responses []readResponse, first uint64, wantHeads []uint64) {
	check(len(responses) > 0, "%s: no response", what)
	var heads []uint64
	for i, resp := range responses {
		check(len(resp.Heads) > 0, "%s: response #%d carries no message", what, i)
		want := uint64(0)
		if i == 0 {
			want = first
		}
		check(resp.FirstHeadID == want, "%s: response #%d (heads %v) has first_head_id %d, want %d", what, i, resp.Heads, resp.FirstHeadID, want)
		heads = append(heads, resp.Heads...)
	}
	check(slices.Equal(heads, wantHeads), "%s delivered heads %v, want %v", what, heads, wantHeads)
}

// checkUntrimmed: a log no rule matches starts at 1, and no read of it carries first_head_id.
func checkUntrimmed(ctx context.Context, client *Client, topic string) untrimmedLog {
	head, err := client.GetHead(ctx, topic, nil)
	noErr(err, "GetHead untrimmed")
	result := untrimmedLog{
		Topic:   topic,
		GetHead: logHead{HeadID: head.GetHeadId(), FirstHeadID: head.GetFirstHeadId(), Bytes: head.GetBytes()},
	}
	check(result.GetHead.HeadID == 3 && result.GetHead.FirstHeadID == 1, "GetHead of the untrimmed log = %+v, want 1..3", result.GetHead)
	result.Fetch = fetchResponses(ctx, client, topic, 0)
	result.FetchPacked = fetchResponses(ctx, client, topic, packedPerResponse)
	for _, responses := range [][]readResponse{result.Fetch, result.FetchPacked} {
		var heads []uint64
		for i, resp := range responses {
			check(resp.FirstHeadID == 0, "Fetch of the untrimmed log: response #%d has first_head_id %d, want 0", i, resp.FirstHeadID)
			heads = append(heads, resp.Heads...)
		}
		check(slices.Equal(heads, []uint64{1, 2, 3}), "Fetch of the untrimmed log delivered %v, want [1 2 3]", heads)
	}
	return result
}

// checkPayloads: every message carries the payload published at its head.
func checkPayloads(what string, messages []*msgbusv1.MessageEnvelope) {
	for _, m := range messages {
		check(string(m.GetPayload()) == string(retainedPayload(m.GetHeadId())), "%s head %d payload %q", what, m.GetHeadId(), m.GetPayload())
	}
}

func headRange(from, to uint64) []uint64 {
	heads := make([]uint64, 0, to-from+1)
	for head := from; head <= to; head++ {
		heads = append(heads, head)
	}
	return heads
}
