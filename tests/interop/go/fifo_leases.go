package main

// FIFO leases (issue 19) as a grpc-go client uses them: lease messages of a queue in FIFO
// order, extend a lease, ack one by its lease id, reject one (redelivered with attempts + 1),
// let one reach max_attempts so it moves to QUEUE.dead, list the dead letters and redrive
// them. A lease of more than 1,000 messages is refused with INVALID_ARGUMENT naming the field.

import (
	"encoding/json"
	"fmt"

	"google.golang.org/grpc/codes"

	msgbusv1 "msgbus.test/interop/gen/msgbus/v1"
)

// fifoLeasesSummary is the one JSON line the command prints for pytest to assert on.
type fifoLeasesSummary struct {
	Leased       []string `json:"leased"` // payloads of the first lease, in order
	Extended     bool     `json:"extended"`
	Acked        bool     `json:"acked"`
	AckedAgain   bool     `json:"acked_again"`
	Redelivered  string   `json:"redelivered"`
	Attempts     uint32   `json:"attempts"`
	DeadLettered bool     `json:"dead_lettered"`
	DeadReason   string   `json:"dead_reason"`
	Redriven     uint64   `json:"redriven"`
	TooMany      refusal  `json:"too_many"`
	Left         []string `json:"left"` // the queue's payloads at the end
}

// runFifoLeases drives one queue (-queue, configured with max_attempts 2 by the test).
func runFifoLeases(args []string) {
	flags, addr := newFlags("fifo-leases")
	queue := flags.String("queue", "", "the queue to lease from (max_attempts 2)")
	_ = flags.Parse(args)
	check(*addr != "" && *queue != "", "fifo-leases needs -addr and -queue")

	ctx, cancel := deadline(60)
	defer cancel()
	client, err := Dial(ctx, *addr)
	noErr(err, "Dial")
	defer client.Close()
	target := &msgbusv1.NodeId{TenantId: "tenant", BlName: "default", DeviceId: "go-worker"}
	for _, payload := range []string{"a", "b", "c"} {
		_, err := client.EnqueueFIFO(ctx, *queue, "jobs", target, []byte(payload))
		noErr(err, "EnqueueFifo")
	}

	var summary fifoLeasesSummary
	leased, err := client.rpc.LeaseFifo(ctx, &msgbusv1.LeaseFifoRequest{Queue: *queue, MaxMessages: 2, VisibilityMs: 60_000})
	noErr(err, "LeaseFifo")
	leases := leased.GetLeases()
	for _, lease := range leases {
		summary.Leased = append(summary.Leased, string(lease.GetMessage().GetPayload()))
		check(lease.GetLeaseId() != "" && lease.GetExpiresAtMs() > 0, "a lease without id or expiry")
	}
	check(len(leases) == 2, "leased %d messages, want 2", len(leases))
	extended, err := client.rpc.ExtendFifoLease(ctx, &msgbusv1.ExtendFifoLeaseRequest{Queue: *queue, LeaseId: leases[0].GetLeaseId(), VisibilityMs: 120_000})
	noErr(err, "ExtendFifoLease")
	summary.Extended = extended.GetAccepted() && extended.GetExpiresAtMs() > leases[0].GetExpiresAtMs()
	acked, err := client.rpc.AckFifoLease(ctx, &msgbusv1.AckFifoLeaseRequest{Queue: *queue, LeaseId: leases[0].GetLeaseId()})
	noErr(err, "AckFifoLease")
	summary.Acked = acked.GetAccepted()
	again, err := client.rpc.AckFifoLease(ctx, &msgbusv1.AckFifoLeaseRequest{Queue: *queue, LeaseId: leases[0].GetLeaseId()})
	noErr(err, "AckFifoLease again")
	summary.AckedAgain = again.GetAccepted()
	ok("leased, extended and acked")

	rejected, err := client.rpc.RejectFifoLease(ctx, &msgbusv1.RejectFifoLeaseRequest{Queue: *queue, LeaseId: leases[1].GetLeaseId()})
	noErr(err, "RejectFifoLease")
	check(rejected.GetAccepted() && !rejected.GetDeadLettered(), "the first reject: %v", rejected)
	next, err := client.rpc.LeaseFifo(ctx, &msgbusv1.LeaseFifoRequest{Queue: *queue})
	noErr(err, "LeaseFifo again")
	check(len(next.GetLeases()) == 1, "leased %d messages, want 1", len(next.GetLeases()))
	redelivered := next.GetLeases()[0]
	summary.Redelivered = string(redelivered.GetMessage().GetPayload())
	summary.Attempts = redelivered.GetMessage().GetAttempts()
	last, err := client.rpc.RejectFifoLease(ctx, &msgbusv1.RejectFifoLeaseRequest{Queue: *queue, LeaseId: redelivered.GetLeaseId()})
	noErr(err, "RejectFifoLease last")
	summary.DeadLettered = last.GetDeadLettered()
	dead, err := client.rpc.ListFifo(ctx, &msgbusv1.ListFifoRequest{Queue: *queue + ".dead"})
	noErr(err, "ListFifo dead")
	check(len(dead.GetMessages()) == 1, "%d dead letters, want 1", len(dead.GetMessages()))
	summary.DeadReason = dead.GetMessages()[0].GetDeadReason()
	ok("rejected twice: dead-lettered")

	redriven, err := client.rpc.RedriveFifo(ctx, &msgbusv1.RedriveFifoRequest{Queue: *queue})
	noErr(err, "RedriveFifo")
	summary.Redriven = redriven.GetMovedCount()
	_, err = client.rpc.LeaseFifo(ctx, &msgbusv1.LeaseFifoRequest{Queue: *queue, MaxMessages: 1001})
	summary.TooMany = refused(err, codes.InvalidArgument, "max_messages")
	left, err := client.rpc.ListFifo(ctx, &msgbusv1.ListFifoRequest{Queue: *queue})
	noErr(err, "ListFifo")
	summary.Left = []string{}
	for _, message := range left.GetMessages() {
		summary.Left = append(summary.Left, fmt.Sprintf("%s:%d", message.GetPayload(), message.GetAttempts()))
	}
	line, err := json.Marshal(summary)
	noErr(err, "summary JSON")
	fmt.Printf("summary %s\n", line)
}
