package main

// Sequential publishes over PublishStream from a compiled client (issue 20, scenario (a)): each
// publish is sent and its durable answer awaited before the next, as a sequential publisher
// does. Against the same msgbusd, the difference to the Python SDK's figure is what the
// client's Python costs per publish; bench/native_client.py runs both.

import (
	"encoding/json"
	"fmt"
	"sort"
	"syscall"
	"time"

	msgbusv1 "msgbus.test/interop/gen/msgbus/v1"
)

// latencySummary is what one run measured, for pytest and bench/native_client.py.
type latencySummary struct {
	Count    int     `json:"count"`
	LastID   uint64  `json:"last_head_id"`
	P50Ms    float64 `json:"p50_ms"`
	P99Ms    float64 `json:"p99_ms"`
	Rate     float64 `json:"rate"`
	ClientUs float64 `json:"client_cpu_us"`
}

// cpuSeconds is the CPU time (user and system) this process has used.
func cpuSeconds() float64 {
	var usage syscall.Rusage
	noErr(syscall.Getrusage(syscall.RUSAGE_SELF, &usage), "Getrusage")
	seconds := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return seconds(usage.Utime) + seconds(usage.Stime)
}

// runPublishLatency publishes -warm then -count payloads of -size bytes to -topic, one at a
// time on one PublishStream, and prints the latencies of the -count as one summary line.
func runPublishLatency(args []string) {
	flags, addr := newFlags("publish-latency")
	topic := flags.String("topic", "", "the topic to publish to")
	count := flags.Int("count", 1000, "publishes measured")
	warm := flags.Int("warm", 50, "publishes before measuring")
	size := flags.Int("size", 256, "payload bytes")
	_ = flags.Parse(args)
	check(*addr != "" && *topic != "" && *count > 0, "publish-latency needs -addr, -topic and a positive -count")

	ctx, cancel := deadline(600)
	defer cancel()
	client, err := Dial(ctx, *addr)
	noErr(err, "Dial")
	defer client.Close()
	stream, err := client.rpc.PublishStream(ctx)
	noErr(err, "PublishStream")

	payload := make([]byte, *size)
	var lastID uint64
	publish := func(id uint64) time.Duration {
		began := time.Now()
		request := &msgbusv1.PublishStreamRequest{
			RequestId: id,
			Publish:   &msgbusv1.PublishRequest{Topic: *topic, Payload: payload},
		}
		noErr(stream.Send(request), "Send")
		response, err := stream.Recv()
		noErr(err, "Recv")
		took := time.Since(began)
		check(response.GetRequestId() == id, "answer for request %d, not %d", response.GetRequestId(), id)
		check(response.GetErrorCode() == 0, "publish %d refused: %s", id, response.GetErrorMessage())
		messages := response.GetMessages()
		check(len(messages) == 1, "%d messages in the answer to publish %d", len(messages), id)
		lastID = messages[0].GetHeadId()
		return took
	}
	for i := 0; i < *warm; i++ {
		publish(uint64(i + 1))
	}
	latencies := make([]float64, 0, *count)
	cpu0, began := cpuSeconds(), time.Now()
	for i := 0; i < *count; i++ {
		latencies = append(latencies, publish(uint64(*warm+i+1)).Seconds()*1e3)
	}
	elapsed, cpu := time.Since(began).Seconds(), cpuSeconds()-cpu0
	noErr(stream.CloseSend(), "CloseSend")
	sort.Float64s(latencies)
	summary := latencySummary{
		Count:    *count,
		LastID:   lastID,
		P50Ms:    latencies[len(latencies)/2],
		P99Ms:    latencies[min(len(latencies)-1, len(latencies)*99/100)],
		Rate:     float64(*count) / elapsed,
		ClientUs: cpu / float64(*count) * 1e6,
	}
	encoded, err := json.Marshal(summary)
	noErr(err, "json")
	fmt.Printf("summary %s\n", encoded)
	ok("%d sequential publishes on one PublishStream, p50 %.3f ms", *count, summary.P50Ms)
}
