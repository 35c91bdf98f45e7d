package main

// PublishStream (issue 20) as a grpc-go client uses it: publishes and a batch on one open
// stream, each answered in request order with its request_id once durable. One request in the
// middle is refused (an empty topic); its answer carries the unary RPC's code and message, and
// the stream goes on with the requests after it.

import (
	"encoding/json"
	"fmt"
	"io"

	msgbusv1 "msgbus.test/interop/gen/msgbus/v1"
)

// streamAnswer is one response of the stream, for pytest to assert on.
type streamAnswer struct {
	RequestID uint64   `json:"request_id"`
	Heads     []uint64 `json:"heads"`
	Code      uint32   `json:"code"` // the gRPC status code number, 0 when stored
	Message   string   `json:"message,omitempty"`
}

// runPublishStream publishes -count messages to -topic on one PublishStream, then a batch of
// two, with a refused request after the first half; it prints the answers as one JSON line.
func runPublishStream(args []string) {
	flags, addr := newFlags("publish-stream")
	topic := flags.String("topic", "", "the topic to publish to")
	count := flags.Int("count", 10, "single publishes, before and after the refused request")
	_ = flags.Parse(args)
	check(*addr != "" && *topic != "", "publish-stream needs -addr and -topic")

	ctx, cancel := deadline(60)
	defer cancel()
	client, err := Dial(ctx, *addr)
	noErr(err, "Dial")
	defer client.Close()

	stream, err := client.rpc.PublishStream(ctx)
	noErr(err, "PublishStream")
	var requests []*msgbusv1.PublishStreamRequest
	add := func(request *msgbusv1.PublishStreamRequest) {
		request.RequestId = uint64(100 + len(requests))
		requests = append(requests, request)
	}
	for i := 0; i < *count; i++ {
		if i == *count/2 {
			add(&msgbusv1.PublishStreamRequest{Publish: &msgbusv1.PublishRequest{Topic: "", Payload: []byte("refused")}})
		}
		payload := []byte(fmt.Sprintf("go-%d", i))
		add(&msgbusv1.PublishStreamRequest{Publish: &msgbusv1.PublishRequest{Topic: *topic, Payload: payload}})
	}
	add(&msgbusv1.PublishStreamRequest{Entries: []*msgbusv1.PublishRequest{
		{Topic: *topic, Payload: []byte("batch-a")},
		{Topic: *topic, Payload: []byte("batch-b")},
	}})
	// All requests are in flight before the first answer is read.
	for _, request := range requests {
		noErr(stream.Send(request), "Send")
	}
	noErr(stream.CloseSend(), "CloseSend")
	var answers []streamAnswer
	for {
		response, err := stream.Recv()
		if err == io.EOF {
			break
		}
		noErr(err, "Recv")
		answer := streamAnswer{
			RequestID: response.GetRequestId(),
			Heads:     headIDs(response.GetMessages()),
			Code:      response.GetErrorCode(),
			Message:   response.GetErrorMessage(),
		}
		answers = append(answers, answer)
	}
	check(len(answers) == len(requests), "%d answers for %d requests", len(answers), len(requests))
	for i, answer := range answers {
		check(answer.RequestID == requests[i].RequestId, "answer %d is for request %d, not %d", i, answer.RequestID, requests[i].RequestId)
	}
	ok("%d requests answered in order on one stream", len(answers))
	line, err := json.Marshal(answers)
	noErr(err, "summary JSON")
	fmt.Printf("summary %s\n", line)
}
