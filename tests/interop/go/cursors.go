package main

// Durable named cursors (issue 19) as a grpc-go client uses them: commit a consumer's position
// on a log, read it back, list every cursor in pages of -page-size with the opaque token, and
// delete one cursor and then every cursor of a name. A commit above the log's head is refused
// with FAILED_PRECONDITION and an empty name with INVALID_ARGUMENT; both store nothing.

import (
	"encoding/json"
	"fmt"

	"google.golang.org/grpc/codes"

	msgbusv1 "msgbus.test/interop/gen/msgbus/v1"
)

// cursorsSummary is the one JSON line the command prints for pytest to assert on.
type cursorsSummary struct {
	Committed    uint64   `json:"committed"`
	Read         uint64   `json:"read"`
	ReadOrigin   string   `json:"read_origin"`
	Missing      bool     `json:"missing_found"`
	Listed       []string `json:"listed"` // name/topic of every cursor, in listing order
	Pages        int      `json:"pages"`
	AboveHead    refusal  `json:"above_head"`
	EmptyName    refusal  `json:"empty_name"`
	DeletedOne   uint64   `json:"deleted_one"`
	DeletedName  uint64   `json:"deleted_name"`
	LeftAfterAll []string `json:"left"`
}

// runCursors publishes -count messages to -topic, commits cursors of -names on it (and one on
// a second topic), and prints what each cursor RPC answered.
func runCursors(args []string) {
	flags, addr := newFlags("cursors")
	topic := flags.String("topic", "", "the log to keep cursors on")
	count := flags.Int("count", 5, "messages to publish first")
	names := flags.Int("names", 7, "consumer names to commit a cursor for")
	pageSize := flags.Uint("page-size", 3, "the page_size of ListCursors")
	_ = flags.Parse(args)
	check(*addr != "" && *topic != "", "cursors needs -addr and -topic")

	ctx, cancel := deadline(60)
	defer cancel()
	client, err := Dial(ctx, *addr)
	noErr(err, "Dial")
	defer client.Close()

	for i := 0; i < *count; i++ {
		_, err := client.Publish(ctx, *topic, []byte(fmt.Sprintf("go-%d", i)))
		noErr(err, "Publish")
	}
	other := *topic + ".other"
	_, err = client.Publish(ctx, other, []byte("other"))
	noErr(err, "Publish other")

	var summary cursorsSummary
	committed, err := client.rpc.CommitCursor(ctx, &msgbusv1.CommitCursorRequest{
		Name: "go-billing", Topic: *topic, HeadId: uint64(*count),
	})
	noErr(err, "CommitCursor")
	summary.Committed = committed.GetCursor().GetHeadId()
	check(committed.GetCursor().GetUpdatedAtMs() > 0, "the commit carries no updated_at_ms")
	for i := 0; i < *names; i++ {
		_, err := client.rpc.CommitCursor(ctx, &msgbusv1.CommitCursorRequest{
			Name: fmt.Sprintf("go-consumer-%02d", i), Topic: *topic, HeadId: 1,
		})
		noErr(err, "CommitCursor")
	}
	_, err = client.rpc.CommitCursor(ctx, &msgbusv1.CommitCursorRequest{Name: "go-billing", Topic: other, HeadId: 1})
	noErr(err, "CommitCursor other")
	ok("committed %d cursors", *names+2)

	read, err := client.rpc.GetCursor(ctx, &msgbusv1.GetCursorRequest{Name: "go-billing", Topic: *topic})
	noErr(err, "GetCursor")
	check(read.GetFound(), "GetCursor did not find the committed cursor")
	summary.Read = read.GetCursor().GetHeadId()
	origin := read.GetCursor().GetOrigin()
	summary.ReadOrigin = origin.GetTenantId() + "/" + origin.GetBlName() + "/" + origin.GetDeviceId()
	missing, err := client.rpc.GetCursor(ctx, &msgbusv1.GetCursorRequest{Name: "go-nobody", Topic: *topic})
	noErr(err, "GetCursor missing")
	summary.Missing = missing.GetFound()

	request := &msgbusv1.ListCursorsRequest{PageSize: uint32(*pageSize)}
	for {
		page, err := client.rpc.ListCursors(ctx, request)
		noErr(err, "ListCursors")
		summary.Pages++
		check(len(page.GetCursors()) <= int(*pageSize), "a page of %d cursors for page_size %d", len(page.GetCursors()), *pageSize)
		for _, cursor := range page.GetCursors() {
			summary.Listed = append(summary.Listed, cursor.GetName()+"/"+cursor.GetTopic())
		}
		if page.GetNextPageToken() == "" {
			break
		}
		request = &msgbusv1.ListCursorsRequest{PageSize: uint32(*pageSize), PageToken: page.GetNextPageToken()}
	}
	ok("listed %d cursors in %d pages", len(summary.Listed), summary.Pages)

	_, err = client.rpc.CommitCursor(ctx, &msgbusv1.CommitCursorRequest{Name: "go-billing", Topic: *topic, HeadId: uint64(*count + 1)})
	summary.AboveHead = refused(err, codes.FailedPrecondition, "head_id")
	_, err = client.rpc.CommitCursor(ctx, &msgbusv1.CommitCursorRequest{Name: "", Topic: *topic, HeadId: 1})
	summary.EmptyName = refused(err, codes.InvalidArgument, "name")

	one, err := client.rpc.DeleteCursor(ctx, &msgbusv1.DeleteCursorRequest{Name: "go-billing", Topic: other})
	noErr(err, "DeleteCursor")
	summary.DeletedOne = one.GetDeletedCount()
	all, err := client.rpc.DeleteCursor(ctx, &msgbusv1.DeleteCursorRequest{Name: "go-billing"})
	noErr(err, "DeleteCursor name")
	summary.DeletedName = all.GetDeletedCount()
	left, err := client.rpc.ListCursors(ctx, &msgbusv1.ListCursorsRequest{Name: "go-billing"})
	noErr(err, "ListCursors after delete")
	summary.LeftAfterAll = []string{}
	for _, cursor := range left.GetCursors() {
		summary.LeftAfterAll = append(summary.LeftAfterAll, cursor.GetName()+"/"+cursor.GetTopic())
	}
	line, err := json.Marshal(summary)
	noErr(err, "summary JSON")
	fmt.Printf("summary %s\n", line)
}
