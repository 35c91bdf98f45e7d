package main

// The original SDK's reconnecting subscription across daemon crashes. pytest publishes, kills
// the daemon with SIGKILL, restarts it on the same port and data, and publishes more; this side
// subscribes once through SubscribeIterator and checks that every head_id 1..count arrives
// exactly once and in order, that every reconnect resumes at the last head_id + 1, and that
// reconnects are spaced by the fixed 250 ms delay. It reports progress through a file, which
// pytest polls to know when to crash the daemon.

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

func runResume(args []string) {
	flags, addr := newFlags("resume")
	topic := flags.String("topic", "", "the log to follow (local origin)")
	count := flags.Uint64("count", 0, "how many messages pytest publishes in all")
	progress := flags.String("progress", "", "file to write the last received head_id to")
	minReconnects := flags.Int("min-reconnects", 1, "reconnects the run must have gone through")
	_ = flags.Parse(args)
	check(*addr != "" && *topic != "" && *count > 0 && *progress != "", "resume needs -addr, -topic, -count and -progress")

	ctx, cancel := deadline(180)
	defer cancel()
	client, err := Dial(ctx, *addr)
	noErr(err, "Dial")
	defer client.Close()

	iterator := client.SubscribeIterator(ctx, *topic, SubscribeOptions{})
	var last uint64
	var opens []time.Time
	iterator.OnOpen = func(from uint64) {
		check(from == last+1, "a subscription was opened from %d, want last head_id + 1 = %d", from, last+1)
		now := time.Now()
		if len(opens) > 0 {
			gap := now.Sub(opens[len(opens)-1])
			check(gap >= DefaultReconnectDelay, "reconnect after %v, sooner than the fixed %v", gap, DefaultReconnectDelay)
		}
		opens = append(opens, now)
	}
	for last < *count {
		message, err := iterator.Recv()
		noErr(err, "SubscribeIterator.Recv")
		check(message.GetHeadId() == last+1, "received head_id %d after %d: not every head exactly once in order", message.GetHeadId(), last)
		want := fmt.Sprintf("m-%d", message.GetHeadId())
		check(string(message.GetPayload()) == want, "head %d payload %q, want %q", message.GetHeadId(), message.GetPayload(), want)
		last = message.GetHeadId()
		writeProgress(*progress, last)
	}
	reconnects := len(opens) - 1
	check(reconnects >= *minReconnects, "only %d reconnects, want at least %d", reconnects, *minReconnects)
	ok("SubscribeIterator: head_ids 1..%d exactly once, in order, across %d reconnects (each >= %v, each from last + 1)",
		*count, reconnects, DefaultReconnectDelay)
}

// writeProgress replaces the file atomically, so the poller never reads a partial number.
func writeProgress(path string, head uint64) {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	noErr(os.WriteFile(tmp, []byte(fmt.Sprint(head)), 0o644), "write progress")
	noErr(os.Rename(tmp, path), "rename progress")
}
