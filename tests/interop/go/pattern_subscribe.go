package main

// Pattern Subscribe (issue 19), as a client that knows the extension uses it: one stream with
// topic_pattern over the logs of several origins, each response carrying messages of one log;
// the client keeps one cursor per log and resumes with resume_after, so each log goes on
// exactly after its last delivered head. Invalid requests are INVALID_ARGUMENT naming the field.

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	msgbusv1 "msgbus.test/interop/gen/msgbus/v1"
)

// patternSummary is the one JSON line the command prints for pytest to assert on.
type patternSummary struct {
	Logs      map[string]uint64 `json:"logs"`      // "topic origin" -> last head delivered
	Responses int               `json:"responses"` // of the first stream
	Resumed   map[string]uint64 `json:"resumed"`   // messages per log after resume_after
	Refusals  map[string]string `json:"refusals"`  // request -> "CODE field-named"
}

// readPattern reads a pattern stream until `want` messages arrived, checking per-log order
// against `last` (the last head per log, updated) and that each response holds one log.
func readPattern(stream msgbusv1.MsgbusService_SubscribeClient, want int, last map[string]uint64, origins map[string]*msgbusv1.NodeId) int {
	got, responses := 0, 0
	for got < want {
		response, err := stream.Recv()
		noErr(err, "Subscribe(topic_pattern).Recv")
		responses++
		messages := response.GetMessages()
		check(len(messages) > 0, "a packed response carries messages")
		first := messages[0]
		key := first.GetTopic() + " " + nodeKey(first.GetOrigin())
		origins[key] = first.GetOrigin()
		for _, message := range messages {
			check(message.GetTopic()+" "+nodeKey(message.GetOrigin()) == key,
				"response mixes logs: %s and %s %s", key, message.GetTopic(), nodeKey(message.GetOrigin()))
			check(message.GetHeadId() == last[key]+1,
				"log %s: head %d after %d (per-log order, no gap, no duplicate)", key, message.GetHeadId(), last[key])
			last[key] = message.GetHeadId()
			got++
		}
	}
	return responses
}

func patternRefusal(ctx context.Context, client *Client, request *msgbusv1.SubscribeRequest, field string) string {
	stream, err := client.rpc.Subscribe(ctx, request)
	if err == nil {
		_, err = stream.Recv()
	}
	st, _ := status.FromError(err)
	named := "field-named"
	if !strings.Contains(st.Message(), field) {
		named = "field-missing"
	}
	return st.Code().String() + " " + named
}

func runPatternSubscribe(args []string) {
	flags, addr := newFlags("pattern-subscribe")
	pattern := flags.String("pattern", "", "topic_pattern")
	total := flags.Int("messages", 0, "messages the daemon holds under the pattern")
	logs := flags.Int("logs", 0, "logs the pattern matches")
	_ = flags.Parse(args)
	check(*addr != "" && *pattern != "" && *total > 0 && *logs > 0, "pattern-subscribe needs -addr -pattern -messages -logs")

	ctx, cancel := deadline(120)
	defer cancel()
	client, err := Dial(ctx, *addr)
	noErr(err, "Dial")
	defer client.Close()

	summary := patternSummary{Logs: map[string]uint64{}, Resumed: map[string]uint64{}, Refusals: map[string]string{}}
	origins := map[string]*msgbusv1.NodeId{}
	streamCtx, stop := context.WithCancel(ctx)
	stream, err := client.rpc.Subscribe(streamCtx, &msgbusv1.SubscribeRequest{
		TopicPattern: *pattern, ReplayLimit: 7, MaxMessagesPerResponse: 5,
	})
	noErr(err, "Subscribe(topic_pattern)")
	summary.Responses = readPattern(stream, *total, summary.Logs, origins)
	stop()
	check(len(summary.Logs) == *logs, "%d logs delivered, want %d", len(summary.Logs), *logs)
	ok("Subscribe(topic_pattern %q): %d messages of %d logs, each log in order, one log per response", *pattern, *total, *logs)

	// Resume every log two heads before its end: exactly those two arrive again, per log.
	resume := []*msgbusv1.TopicHead{}
	last := map[string]uint64{}
	keys := make([]string, 0, len(summary.Logs))
	for key := range summary.Logs {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	for _, key := range keys {
		head := summary.Logs[key] - 2
		last[key] = head
		resume = append(resume, &msgbusv1.TopicHead{Topic: strings.SplitN(key, " ", 2)[0], Origin: origins[key], HeadId: head})
	}
	streamCtx, stop = context.WithCancel(ctx)
	stream, err = client.rpc.Subscribe(streamCtx, &msgbusv1.SubscribeRequest{
		TopicPattern: *pattern, ResumeAfter: resume, MaxMessagesPerResponse: 64,
	})
	noErr(err, "Subscribe(resume_after)")
	readPattern(stream, 2*len(keys), last, origins)
	stop()
	for _, key := range keys {
		check(last[key] == summary.Logs[key], "log %s resumed to %d, want %d", key, last[key], summary.Logs[key])
		summary.Resumed[key] = 2
	}
	ok("Subscribe(resume_after): each of %d logs resumed exactly after its head", len(keys))

	summary.Refusals["topic+topic_pattern"] = patternRefusal(ctx, client,
		&msgbusv1.SubscribeRequest{Topic: "t", TopicPattern: *pattern}, "topic")
	summary.Refusals["bad glob"] = patternRefusal(ctx, client,
		&msgbusv1.SubscribeRequest{TopicPattern: "a.[b"}, "topic_pattern")
	for what, answer := range summary.Refusals {
		check(answer == codes.InvalidArgument.String()+" field-named", "%s answered %s", what, answer)
	}
	ok("invalid pattern requests: INVALID_ARGUMENT naming the field")
	line, err := json.Marshal(summary)
	noErr(err, "json")
	fmt.Printf("summary %s\n", line)
}
