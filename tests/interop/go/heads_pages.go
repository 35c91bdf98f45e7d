package main

// The ListHeads paging and change-cursor extensions (issue 15), as a client that knows them
// would use them: page with page_size and page_token until next_page_token is empty, keep the
// listing's cursor, and pass it as changed_since to list only the logs changed after it. A
// cursor of an earlier run of the daemon is FAILED_PRECONDITION: list every head again.

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	msgbusv1 "msgbus.test/interop/gen/msgbus/v1"
)

// changedHead is a log the daemon listed as changed, with its head then.
type changedHead struct {
	Topic  string `json:"topic"`
	HeadID uint64 `json:"head_id"`
}

// refusal is how the daemon answered a request it must refuse.
type refusal struct {
	Code        string `json:"code"`
	NamesField  bool   `json:"names_field"`
	ListsAgain  bool   `json:"says_list_again,omitempty"`
	MessageText string `json:"message"`
}

// headsPagesSummary is the one JSON line the command prints for pytest to assert on.
type headsPagesSummary struct {
	Topics          []string      `json:"topics"` // every topic listed, in listing order
	PageSizes       []int         `json:"page_sizes"`
	ListingCursors  int           `json:"listing_cursors"` // distinct cursors over the pages
	Cursor          string        `json:"cursor"`          // the last cursor, for a later run
	Idle            []changedHead `json:"idle"`
	Published       []string      `json:"published"`
	Changed         []changedHead `json:"changed"`
	ChangedPages    int           `json:"changed_pages"` // of page_size 1
	AfterChanges    []changedHead `json:"after_changes"`
	MalformedCursor refusal       `json:"malformed_cursor"`
	MalformedToken  refusal       `json:"malformed_page_token"`
}

// staleCursorSummary is the JSON line of a run given a cursor of the daemon's earlier run.
type staleCursorSummary struct {
	StaleCursor     refusal       `json:"stale_cursor"`
	RelistedLogs    int           `json:"relisted_logs"`
	FreshCursorIdle []changedHead `json:"fresh_cursor_idle"`
}

// runHeadsPages either publishes -topics and checks paging and cursors on the fresh store, or,
// with -stale-cursor (a cursor printed by an earlier run of the daemon), checks that the
// daemon refuses it and that a new listing's cursor works.
func runHeadsPages(args []string) {
	flags, addr := newFlags("heads-pages")
	topics := flags.String("topics", "", "comma-separated topics to publish one message to, in this order")
	changes := flags.String("change", "", "comma-separated topics to publish to after the listing, in this order")
	pageSize := flags.Uint("page-size", 3, "the page_size of the paged listing")
	stale := flags.String("stale-cursor", "", "a cursor from an earlier run of the daemon: check only that it is refused")
	_ = flags.Parse(args)
	check(*addr != "", "heads-pages needs -addr")

	ctx, cancel := deadline(120)
	defer cancel()
	client, err := Dial(ctx, *addr)
	noErr(err, "Dial")
	defer client.Close()

	var summary any
	if *stale != "" {
		summary = checkStaleCursor(ctx, client, *stale)
	} else {
		check(*topics != "" && *changes != "", "heads-pages needs -topics and -change (or -stale-cursor)")
		var listed headsPagesSummary
		checkHeadPages(ctx, client, strings.Split(*topics, ","), uint32(*pageSize), &listed)
		checkChangedSince(ctx, client, strings.Split(*changes, ","), &listed)
		summary = listed
	}
	line, err := json.Marshal(summary)
	noErr(err, "summary JSON")
	fmt.Printf("summary %s\n", line)
}

// checkHeadPages publishes topics and pages through ListHeads, checking the pages against the
// unpaged answer an original client gets.
func checkHeadPages(ctx context.Context, client *Client, topics []string, pageSize uint32, summary *headsPagesSummary) {
	for _, topic := range topics {
		_, err := client.Publish(ctx, topic, []byte("listed"))
		noErr(err, "Publish "+topic)
	}
	ok("Publish: one message to each of %d logs", len(topics))

	unpaged, err := client.rpc.ListHeads(ctx, &msgbusv1.ListHeadsRequest{})
	noErr(err, "ListHeads without paging")
	check(unpaged.GetNextPageToken() == "", "a small store's unpaged ListHeads has a next_page_token")
	all := unpaged.GetHeads()
	check(len(all) == len(topics), "the unpaged ListHeads lists %d logs, %d were published", len(all), len(topics))
	for i := 1; i < len(all); i++ {
		check(headKey(all[i-1]) < headKey(all[i]), "the unpaged ListHeads is not in topic, origin order at #%d: %q then %q",
			i, headKey(all[i-1]), headKey(all[i]))
	}
	ok("ListHeads without paging: %d logs in one response, ordered by topic and origin", len(all))

	var paged []*msgbusv1.TopicHead
	cursors := map[string]bool{}
	request := &msgbusv1.ListHeadsRequest{PageSize: pageSize}
	for {
		check(len(summary.PageSizes) <= len(all), "ListHeads page_size %d did not end after %d pages", pageSize, len(summary.PageSizes))
		resp, err := client.rpc.ListHeads(ctx, request)
		noErr(err, "ListHeads page")
		check(len(resp.GetHeads()) <= int(pageSize), "a page holds %d heads, page_size is %d", len(resp.GetHeads()), pageSize)
		check(resp.GetCursor() != "", "a ListHeads page of this daemon has no cursor")
		summary.PageSizes = append(summary.PageSizes, len(resp.GetHeads()))
		cursors[resp.GetCursor()] = true
		summary.Cursor = resp.GetCursor()
		paged = append(paged, resp.GetHeads()...)
		if resp.GetNextPageToken() == "" {
			break
		}
		request = &msgbusv1.ListHeadsRequest{PageSize: pageSize, PageToken: resp.GetNextPageToken()}
	}
	seen := map[string]bool{}
	for _, head := range paged {
		check(!seen[headKey(head)], "the pages list %q twice", headKey(head))
		seen[headKey(head)] = true
	}
	check(len(paged) == len(all), "pages of %d hold %d heads, the unpaged answer %d", pageSize, len(paged), len(all))
	for i := range all {
		check(proto.Equal(paged[i], all[i]), "paged head #%d = %v, want %v", i, paged[i], all[i])
		summary.Topics = append(summary.Topics, paged[i].GetTopic())
	}
	summary.ListingCursors = len(cursors)
	check(len(cursors) == 1, "the pages of one listing carry %d cursors, want the listing's one", len(cursors))
	ok("ListHeads page_size %d: %d pages add up to the unpaged answer, each log once, one cursor", pageSize, len(summary.PageSizes))

	_, err = client.rpc.ListHeads(ctx, &msgbusv1.ListHeadsRequest{PageToken: "not a token"})
	summary.MalformedToken = refused(err, codes.InvalidArgument, "page_token")
	ok("ListHeads with a malformed page_token: INVALID_ARGUMENT naming page_token")
}

// checkChangedSince uses the listing's cursor: nothing while idle, then exactly the logs
// published to, each once, in the order of their latest change.
func checkChangedSince(ctx context.Context, client *Client, changes []string, summary *headsPagesSummary) {
	var cursor string
	summary.Idle, cursor = changedSince(ctx, client, summary.Cursor)
	check(len(summary.Idle) == 0, "changed_since on an idle daemon lists %v", summary.Idle)
	ok("ListHeads changed_since the listing's cursor, idle: nothing")

	heads := map[string]uint64{}
	for _, topic := range changes {
		message, err := client.Publish(ctx, topic, []byte("changed"))
		noErr(err, "Publish "+topic)
		heads[topic] = message.GetHeadId()
	}
	summary.Published = changes
	// A log changed twice is listed once, at its latest change.
	var want []changedHead
	for i, topic := range changes {
		if !slices.Contains(changes[i+1:], topic) {
			want = append(want, changedHead{Topic: topic, HeadID: heads[topic]})
		}
	}
	summary.Changed, cursor = changedSince(ctx, client, cursor)
	check(slices.Equal(summary.Changed, want), "changed_since after publishing lists %v, want %v", summary.Changed, want)
	ok("ListHeads changed_since after publishing to %v: exactly %v, in change order", changes, want)

	// The same changes in pages of one, each page's next_page_token the changed_since of the next.
	var paged []changedHead
	request := &msgbusv1.ListHeadsRequest{ChangedSince: summary.Cursor, PageSize: 1}
	for {
		check(summary.ChangedPages <= len(want), "changed_since page_size 1 did not end after %d pages", summary.ChangedPages)
		resp, err := client.rpc.ListHeads(ctx, request)
		noErr(err, "ListHeads changed_since page")
		summary.ChangedPages++
		check(len(resp.GetHeads()) <= 1, "a changed_since page of size 1 holds %d heads", len(resp.GetHeads()))
		paged = append(paged, changedHeads(resp.GetHeads())...)
		if resp.GetNextPageToken() == "" {
			break
		}
		request = &msgbusv1.ListHeadsRequest{ChangedSince: resp.GetNextPageToken(), PageSize: 1}
	}
	check(slices.Equal(paged, want), "changed_since in pages of 1 lists %v, want %v", paged, want)
	ok("ListHeads changed_since page_size 1: %d pages list the same changes", summary.ChangedPages)

	summary.AfterChanges, cursor = changedSince(ctx, client, cursor)
	check(len(summary.AfterChanges) == 0, "changed_since the cursor after the changes lists %v", summary.AfterChanges)
	summary.Cursor = cursor
	ok("ListHeads changed_since the newest cursor: nothing")

	_, err := client.rpc.ListHeads(ctx, &msgbusv1.ListHeadsRequest{ChangedSince: "@@@"})
	summary.MalformedCursor = refused(err, codes.InvalidArgument, "changed_since")
	ok("ListHeads with a malformed changed_since: INVALID_ARGUMENT naming changed_since")
}

// checkStaleCursor checks that the daemon refuses a cursor of its earlier run, and that the
// cursor of a new full listing works.
func checkStaleCursor(ctx context.Context, client *Client, stale string) staleCursorSummary {
	var summary staleCursorSummary
	_, err := client.rpc.ListHeads(ctx, &msgbusv1.ListHeadsRequest{ChangedSince: stale})
	summary.StaleCursor = refused(err, codes.FailedPrecondition, "changed_since")
	summary.StaleCursor.ListsAgain = strings.Contains(summary.StaleCursor.MessageText, "list every head again")
	check(summary.StaleCursor.ListsAgain, "the refusal of a stale cursor does not say to list every head again: %q",
		summary.StaleCursor.MessageText)
	ok("ListHeads changed_since a cursor of an earlier run: FAILED_PRECONDITION naming changed_since")

	var cursor string
	request := &msgbusv1.ListHeadsRequest{PageSize: 2}
	for {
		resp, err := client.rpc.ListHeads(ctx, request)
		noErr(err, "ListHeads page")
		summary.RelistedLogs += len(resp.GetHeads())
		if cursor == "" {
			cursor = resp.GetCursor()
		}
		if resp.GetNextPageToken() == "" {
			break
		}
		request = &msgbusv1.ListHeadsRequest{PageSize: 2, PageToken: resp.GetNextPageToken()}
	}
	check(cursor != "" && cursor != stale, "the new listing's cursor is %q (the stale one %q)", cursor, stale)
	summary.FreshCursorIdle, _ = changedSince(ctx, client, cursor)
	check(len(summary.FreshCursorIdle) == 0, "changed_since the new listing's cursor lists %v", summary.FreshCursorIdle)
	ok("a new listing (%d logs) gives a cursor that works: nothing changed since", summary.RelistedLogs)
	return summary
}

// changedSince lists every log changed after cursor (following pages) and the cursor after it.
func changedSince(ctx context.Context, client *Client, cursor string) ([]changedHead, string) {
	changed := []changedHead{} // JSON [] rather than null when nothing changed
	request := &msgbusv1.ListHeadsRequest{ChangedSince: cursor}
	for {
		resp, err := client.rpc.ListHeads(ctx, request)
		noErr(err, "ListHeads changed_since")
		check(resp.GetCursor() != "", "a changed_since answer has no cursor")
		changed = append(changed, changedHeads(resp.GetHeads())...)
		if resp.GetNextPageToken() == "" {
			return changed, resp.GetCursor()
		}
		request = &msgbusv1.ListHeadsRequest{ChangedSince: resp.GetNextPageToken()}
	}
}

func changedHeads(heads []*msgbusv1.TopicHead) []changedHead {
	changed := make([]changedHead, 0, len(heads))
	for _, head := range heads {
		changed = append(changed, changedHead{Topic: head.GetTopic(), HeadID: head.GetHeadId()})
	}
	return changed
}

// refused checks that err has the status code and names field, and reports it.
func refused(err error, code codes.Code, field string) refusal {
	got := status.Convert(err)
	answer := refusal{Code: statusName(got.Code()), NamesField: strings.Contains(got.Message(), field), MessageText: got.Message()}
	check(err != nil && got.Code() == code && answer.NamesField, "want %s naming %s, got %v", code, field, err)
	return answer
}

// statusName is a code's name in the contract's spelling (FailedPrecondition: FAILED_PRECONDITION).
func statusName(code codes.Code) string {
	var out strings.Builder
	for i, r := range code.String() {
		if i > 0 && r >= 'A' && r <= 'Z' {
			out.WriteByte('_')
		}
		out.WriteRune(r)
	}
	return strings.ToUpper(out.String())
}

// headKey is a log's listing key: its topic, then its origin key. Go compares strings by
// UTF-8 bytes, which is the code-point order the daemon lists in.
func headKey(head *msgbusv1.TopicHead) string {
	return head.GetTopic() + "\x00" + nodeKey(head.GetOrigin())
}
