package apiserver

import (
	"context"
	"fmt"
	"testing"

	"berth/internal/store"
)

// The hub starts its store watch well before the first stream's revision
// and so replays older changes: a delete from before a list must not reach
// a stream from that list (with the store's newest revision on it, it once
// did, and agents removed the containers of instances whose names had been
// used again; gateways dropped their routes).
func TestHubReplayHoldsBackOldDeletes(t *testing.T) {
	hs, st := newServer(t)
	ctx := context.Background()
	first := putInstance(t, st, "a-1", "a", "n1")
	if _, err := st.Txn(ctx, store.Instances.Delete("a-1", first)); err != nil {
		t.Fatal(err)
	}
	putInstance(t, st, "a-1", "a", "n1") // the name used again
	for _, query := range []string{"node=n1", "app=a", ""} {
		_, listed, err := store.Instances.List(ctx, st)
		if err != nil {
			t.Fatal(err)
		}
		events := openWatch(t, hs.URL, fmt.Sprintf("%s&revision=%d", query, listed))
		after := putInstance(t, st, "a-2-"+query, "a", "n1")
		ev := next(t, events)
		if ev.Type != "put" || ev.Revision != after {
			t.Fatalf("watch %q from %d: first change is %s %s at %d, want the put at %d",
				query, listed, ev.Type, ev.Object.Name, ev.Revision, after)
		}
	}
}
