package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"berth/api"
)

func openTest(t *testing.T) *Store {
	t.Helper()
	st, err := OpenEmbedded(context.Background(), t.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

func TestRawEventJSONAddsVersion(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`{"name":"a"}`, `{"name":"a","version":7}`},
		{`{}`, `{"version":7}`},
		{` { "name":"a" } `, `{ "name":"a" ,"version":7}`},
	} {
		if got := string(RawEvent{Value: []byte(c.in), ModRevision: 7}.JSON()); got != c.want {
			t.Errorf("JSON(%s) = %s, want %s", c.in, got, c.want)
		}
	}
}

// Records are stored without their version; reads and both watches give
// the key's revision as the version.
func TestWatchRawAndTypedAgree(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := openTest(t)
	_, rev, err := Queues.List(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	raw, rawErrc := Queues.WatchRaw(ctx, st, rev)
	typed, typedErrc := Queues.Watch(ctx, st, rev)

	// A stale version in the value must not reach the store.
	put, err := st.Txn(ctx, Queues.Create("media", api.Queue{Name: "media", Concurrency: 4, Version: 99}))
	if err != nil {
		t.Fatal(err)
	}
	del, err := st.Txn(ctx, Queues.Delete("media", put))
	if err != nil {
		t.Fatal(err)
	}

	for i, want := range []struct {
		deleted  bool
		revision int64
	}{{false, put}, {true, del}} {
		var re RawEvent
		select {
		case re = <-raw:
		case err := <-rawErrc:
			t.Fatal(err)
		case <-ctx.Done():
			t.Fatal("no raw event")
		}
		if re.Deleted != want.deleted || re.Revision != want.revision || re.ModRevision != put {
			t.Errorf("raw event %d: deleted %v revision %d mod %d, want %v %d %d", i, re.Deleted, re.Revision, re.ModRevision, want.deleted, want.revision, put)
		}
		if strings.Contains(string(re.Value), "version") {
			t.Errorf("raw event %d: stored value carries a version: %s", i, re.Value)
		}
		var q api.Queue
		if err := json.Unmarshal(re.JSON(), &q); err != nil || q.Version != put || q.Concurrency != 4 {
			t.Errorf("raw event %d: JSON() = %s (%v), want version %d", i, re.JSON(), err, put)
		}

		var te Event[api.Queue]
		select {
		case te = <-typed:
		case err := <-typedErrc:
			t.Fatal(err)
		case <-ctx.Done():
			t.Fatal("no typed event")
		}
		if te.Deleted != want.deleted || te.Revision != want.revision || te.Object.Version != put || te.Object.Name != "media" {
			t.Errorf("typed event %d: %+v", i, te)
		}
	}
}

// A typed watch ends without blocking when its context ends.
func TestWatchClosesOnCancel(t *testing.T) {
	st := openTest(t)
	ctx, cancel := context.WithCancel(context.Background())
	events, _ := Queues.Watch(ctx, st, 0)
	cancel()
	select {
	case _, ok := <-events:
		for ok {
			_, ok = <-events
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not close after cancel")
	}
}

// A watch from an old revision replays what happened since with the
// revision each change was made at: a delete made before a list must not
// come out newer than the list (it would undo a record created again
// since, as with instance names reused after a scale to 0 and back).
func TestWatchReplaysDeletesAtTheirRevision(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := openTest(t)
	_, start, err := Queues.List(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	put, err := st.Txn(ctx, Queues.Create("media", api.Queue{Name: "media"}))
	if err != nil {
		t.Fatal(err)
	}
	del, err := st.Txn(ctx, Queues.Delete("media", put))
	if err != nil {
		t.Fatal(err)
	}
	again, err := st.Txn(ctx, Queues.Create("media", api.Queue{Name: "media", Concurrency: 2}))
	if err != nil {
		t.Fatal(err)
	}
	// Later writes move the store's revision past all of them.
	for i := range 3 {
		if _, err := st.Txn(ctx, Queues.PutAny(fmt.Sprintf("other-%d", i), api.Queue{Name: fmt.Sprintf("other-%d", i)})); err != nil {
			t.Fatal(err)
		}
	}
	raw, rawErrc := Queues.WatchRaw(ctx, st, start)
	typed, typedErrc := Queues.Watch(ctx, st, start)
	for i, want := range []struct {
		deleted  bool
		revision int64
	}{{false, put}, {true, del}, {false, again}} {
		select {
		case re := <-raw:
			if re.Name != "media" || re.Deleted != want.deleted || re.Revision != want.revision {
				t.Errorf("raw event %d: %s deleted %v at %d, want deleted %v at %d", i, re.Name, re.Deleted, re.Revision, want.deleted, want.revision)
			}
		case err := <-rawErrc:
			t.Fatal(err)
		case <-ctx.Done():
			t.Fatal("no raw event")
		}
		select {
		case te := <-typed:
			if te.Name != "media" || te.Deleted != want.deleted || te.Revision != want.revision {
				t.Errorf("typed event %d: %s deleted %v at %d, want deleted %v at %d", i, te.Name, te.Deleted, te.Revision, want.deleted, want.revision)
			}
		case err := <-typedErrc:
			t.Fatal(err)
		case <-ctx.Done():
			t.Fatal("no typed event")
		}
	}
}

// A missing record is named as a user would name it, and is ErrNotFound.
func TestNotFoundNamesTheRecord(t *testing.T) {
	st := openTest(t)
	_, err := Apps.Get(context.Background(), st, "nosuch")
	if !errors.Is(err, ErrNotFound) || err.Error() != "no app named nosuch" {
		t.Fatalf("Get of a missing app: %v (is ErrNotFound: %v), want \"no app named nosuch\"", err, errors.Is(err, ErrNotFound))
	}
}
