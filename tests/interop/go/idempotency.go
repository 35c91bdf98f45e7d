package main

// Exactly-once publish (issue 19) as a grpc-go client uses it: a Publish carrying an
// idempotency_key, sent again with the same key (as a client retrying after a lost answer
// would), answers the envelope stored the first time with `duplicate` set and stores nothing;
// a PublishBatch answers one duplicate flag per entry; a key over 128 bytes is refused with
// INVALID_ARGUMENT naming idempotency_key.

import (
	"encoding/json"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	msgbusv1 "msgbus.test/interop/gen/msgbus/v1"
)

// idempotencySummary is the one JSON line the command prints for pytest to assert on.
type idempotencySummary struct {
	FirstHead       uint64   `json:"first_head"`
	FirstDuplicate  bool     `json:"first_duplicate"`
	RepeatDuplicate bool     `json:"repeat_duplicate"`
	SameEnvelope    bool     `json:"same_envelope"`
	BatchHeads      []uint64 `json:"batch_heads"`
	BatchDuplicates []bool   `json:"batch_duplicates"`
	TooLong         refusal  `json:"too_long"`
	Head            uint64   `json:"head"`
}

// runIdempotency publishes to -topic under -key twice, then a batch reusing the key, and
// prints what the daemon answered.
func runIdempotency(args []string) {
	flags, addr := newFlags("idempotency")
	topic := flags.String("topic", "", "the log to publish to")
	key := flags.String("key", "go-key-1", "the idempotency key")
	_ = flags.Parse(args)
	check(*addr != "" && *topic != "", "idempotency needs -addr and -topic")

	ctx, cancel := deadline(60)
	defer cancel()
	client, err := Dial(ctx, *addr)
	noErr(err, "Dial")
	defer client.Close()

	var summary idempotencySummary
	first, err := client.rpc.Publish(ctx, &msgbusv1.PublishRequest{
		Topic: *topic, Payload: []byte("first"), IdempotencyKey: *key,
	})
	noErr(err, "Publish")
	repeat, err := client.rpc.Publish(ctx, &msgbusv1.PublishRequest{
		Topic: *topic, Payload: []byte("retried"), IdempotencyKey: *key,
	})
	noErr(err, "Publish again")
	summary.FirstHead = first.GetMessage().GetHeadId()
	summary.FirstDuplicate = first.GetDuplicate()
	summary.RepeatDuplicate = repeat.GetDuplicate()
	summary.SameEnvelope = proto.Equal(first.GetMessage(), repeat.GetMessage())
	check(summary.RepeatDuplicate && summary.SameEnvelope, "the repeat was not a duplicate of the first publish")
	ok("a repeated key answered the first envelope (head %d)", summary.FirstHead)

	batch, err := client.rpc.PublishBatch(ctx, &msgbusv1.PublishBatchRequest{Entries: []*msgbusv1.PublishRequest{
		{Topic: *topic, Payload: []byte("a"), IdempotencyKey: *key},
		{Topic: *topic, Payload: []byte("b"), IdempotencyKey: *key + "-b"},
		{Topic: *topic, Payload: []byte("c"), IdempotencyKey: *key + "-b"},
	}})
	noErr(err, "PublishBatch")
	for _, message := range batch.GetMessages() {
		summary.BatchHeads = append(summary.BatchHeads, message.GetHeadId())
	}
	summary.BatchDuplicates = batch.GetDuplicates()
	ok("batch duplicates %v", summary.BatchDuplicates)

	_, err = client.rpc.Publish(ctx, &msgbusv1.PublishRequest{
		Topic: *topic, Payload: []byte("x"), IdempotencyKey: strings.Repeat("k", 129),
	})
	summary.TooLong = refused(err, codes.InvalidArgument, "idempotency_key")
	ok("a 129-byte key refused: %s", summary.TooLong.MessageText)

	head, err := client.rpc.GetHead(ctx, &msgbusv1.GetHeadRequest{Topic: *topic})
	noErr(err, "GetHead")
	summary.Head = head.GetHeadId()
	line, err := json.Marshal(summary)
	noErr(err, "json")
	fmt.Printf("summary %s\n", line)
}
