package main

// Fleet push sync (issue 17) as a grpc-go device speaks it: open a Push stream, say hello as
// -node, offer the head of its log -topic, push -count messages in one batch and read the ack
// with the hub's durable head; then offer and push a log of another origin, which a hub without
// --accept-relayed refuses (flagged in the offer reply, PERMISSION_DENIED in the ack) while the
// stream goes on, and a batch with a gap, refused the same way.

import (
	"encoding/json"
	"fmt"
	"time"

	msgbusv1 "msgbus.test/interop/gen/msgbus/v1"
)

// pushSummary is the one JSON line the command prints for pytest to assert on.
type pushSummary struct {
	Pusher         string `json:"pusher"`
	Hub            string `json:"hub"`
	MaxBatchBytes  uint64 `json:"max_batch_bytes"`
	OfferedHead    uint64 `json:"offered_head"`
	AckHead        uint64 `json:"ack_head"`
	AckCode        uint32 `json:"ack_code"`
	OtherRefused   bool   `json:"other_refused"`
	OtherAckCode   uint32 `json:"other_ack_code"`
	OtherMessage   string `json:"other_message"`
	GapAckCode     uint32 `json:"gap_ack_code"`
	GapAckHead     uint64 `json:"gap_ack_head"`
	AgainOfferHead uint64 `json:"again_offer_head"`
}

func pushMessages(topic string, origin *msgbusv1.NodeId, from, count int) []*msgbusv1.MessageEnvelope {
	now := uint64(time.Now().UnixMilli())
	messages := make([]*msgbusv1.MessageEnvelope, 0, count)
	for i := 0; i < count; i++ {
		head := uint64(from + i)
		messages = append(messages, &msgbusv1.MessageEnvelope{
			Id:          fmt.Sprintf("00000000-0000-4000-8000-%012d", head),
			Topic:       topic,
			Origin:      origin,
			HeadId:      head,
			Payload:     []byte(fmt.Sprintf("go-push-%d", head)),
			CreatedAtMs: now,
		})
	}
	return messages
}

// runPush pushes one log of -node to the daemon at -addr, and a log of another origin.
func runPush(args []string) {
	flags, addr := newFlags("push")
	node := flags.String("node", "tenant/default/go-device", "the pushing device's identity")
	topic := flags.String("topic", "", "the device's log to push")
	count := flags.Int("count", 10, "messages to push")
	_ = flags.Parse(args)
	check(*addr != "" && *topic != "", "push needs -addr and -topic")

	ctx, cancel := deadline(60)
	defer cancel()
	client, err := Dial(ctx, *addr)
	noErr(err, "Dial")
	defer client.Close()
	stream, err := client.rpc.Push(ctx)
	noErr(err, "Push")
	send := func(request *msgbusv1.PushRequest) *msgbusv1.PushResponse {
		noErr(stream.Send(request), "Push send")
		response, err := stream.Recv()
		noErr(err, "Push recv")
		return response
	}
	device := parseNode(*node)
	var summary pushSummary

	welcome := send(&msgbusv1.PushRequest{Kind: &msgbusv1.PushRequest_Hello{
		Hello: &msgbusv1.PushHello{Node: device},
	}}).GetWelcome()
	check(welcome != nil, "the hello was not answered with a welcome")
	summary.Pusher = nodeKey(welcome.GetPusher())
	summary.Hub = nodeKey(welcome.GetNode())
	summary.MaxBatchBytes = welcome.GetMaxBatchBytes()

	offer := func(topic string, origin *msgbusv1.NodeId, head uint64) (uint64, bool) {
		reply := send(&msgbusv1.PushRequest{Kind: &msgbusv1.PushRequest_Offer{
			Offer: &msgbusv1.PushOffer{Heads: []*msgbusv1.TopicHead{
				{Topic: topic, Origin: origin, HeadId: head, FirstHeadId: 1},
			}},
		}}).GetOfferReply()
		check(reply != nil && len(reply.GetHeads()) == 1 && len(reply.GetRefused()) == 1,
			"an offer of one head was not answered with one head and one flag")
		return reply.GetHeads()[0].GetHeadId(), reply.GetRefused()[0]
	}
	batch := func(id uint64, topic string, origin *msgbusv1.NodeId, from, count int) *msgbusv1.PushAck {
		ack := send(&msgbusv1.PushRequest{Kind: &msgbusv1.PushRequest_Batch{
			Batch: &msgbusv1.PushBatch{
				BatchId: id, Topic: topic, Origin: origin,
				Messages: pushMessages(topic, origin, from, count),
			},
		}}).GetAck()
		check(ack != nil && ack.GetBatchId() == id, "batch %d was not acknowledged in order", id)
		return ack
	}

	head, refused := offer(*topic, device, uint64(*count))
	check(!refused, "the device's own log was refused")
	summary.OfferedHead = head
	ack := batch(1, *topic, device, int(head)+1, *count)
	summary.AckHead, summary.AckCode = ack.GetHeadId(), ack.GetErrorCode()

	other := parseNode("tenant/default/go-other")
	_, summary.OtherRefused = offer(*topic, other, 3)
	otherAck := batch(2, *topic, other, 1, 3)
	summary.OtherAckCode, summary.OtherMessage = otherAck.GetErrorCode(), otherAck.GetErrorMessage()

	gap := batch(3, *topic, device, *count+2, 1)
	summary.GapAckCode, summary.GapAckHead = gap.GetErrorCode(), gap.GetHeadId()
	summary.AgainOfferHead, _ = offer(*topic, device, uint64(*count))
	noErr(stream.CloseSend(), "CloseSend")

	line, err := json.Marshal(summary)
	noErr(err, "json")
	fmt.Printf("summary %s\n", line)
}
