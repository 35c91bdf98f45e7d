package main

// The ListPeerSyncStates paging extension, as a client that knows it would use it.

import (
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	msgbusv1 "msgbus.test/interop/gen/msgbus/v1"
)

// runSyncPages pages through ListPeerSyncStates one state at a time and checks that the pages
// add up to the unpaged answer an original client gets, in the same order.
func runSyncPages(args []string) {
	flags, addr := newFlags("sync-pages")
	minStates := flags.Int("min-states", 1, "the fewest states the daemon must list")
	_ = flags.Parse(args)
	check(*addr != "", "sync-pages needs -addr")

	ctx, cancel := deadline(120)
	defer cancel()
	client, err := Dial(ctx, *addr)
	noErr(err, "Dial")
	defer client.Close()

	all, err := client.ListPeerSyncStates(ctx)
	noErr(err, "ListPeerSyncStates")
	check(len(all) >= *minStates, "ListPeerSyncStates listed %d states, want at least %d", len(all), *minStates)
	ok("ListPeerSyncStates without paging: %d states in one response", len(all))

	var paged []*msgbusv1.PeerSyncState
	token := ""
	for pages := 1; ; pages++ {
		check(pages <= len(all)+1, "ListPeerSyncStates page_size 1 did not end after %d pages", pages)
		resp, err := client.rpc.ListPeerSyncStates(ctx, &msgbusv1.ListPeerSyncStatesRequest{PageSize: 1, PageToken: token})
		noErr(err, "ListPeerSyncStates page")
		check(len(resp.GetStates()) <= 1, "page %d holds %d states, want at most 1", pages, len(resp.GetStates()))
		paged = append(paged, resp.GetStates()...)
		token = resp.GetNextPageToken()
		if token == "" {
			break
		}
	}
	check(len(paged) == len(all), "pages of 1 hold %d states, the unpaged answer %d", len(paged), len(all))
	for i := range all {
		check(proto.Equal(paged[i], all[i]), "paged state #%d = %v, want %v", i, paged[i], all[i])
	}
	ok("ListPeerSyncStates page_size 1: %d pages add up to the unpaged answer", len(paged))

	_, err = client.rpc.ListPeerSyncStates(ctx, &msgbusv1.ListPeerSyncStatesRequest{PageToken: "not a token"})
	check(status.Code(err) == codes.InvalidArgument && strings.Contains(status.Convert(err).Message(), "page_token"),
		"a malformed page_token: %v, want INVALID_ARGUMENT naming page_token", err)
	ok("ListPeerSyncStates with a malformed page_token: INVALID_ARGUMENT naming page_token")
}
