package apiserver

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"berth/api"
	"berth/internal/store"
)

// putInstance writes an instance record and returns the store revision.
func putInstance(t *testing.T, st *store.Store, name, app, node string) int64 {
	t.Helper()
	rev, err := st.Txn(context.Background(), store.Instances.PutAny(name, api.Instance{Name: name, App: app, Node: node, Desired: api.DesiredRun}))
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// openWatch starts a watch request and streams its lines; it fails the
// test on an answer other than 200.
func openWatch(t *testing.T, base, query string) <-chan api.WatchEvent[api.Instance] {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/v1/instances?watch=true&"+query, nil)
	req.Header.Set("Authorization", "Bearer secret")
	out := make(chan api.WatchEvent[api.Instance], 100)
	go func() {
		defer close(out)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("watch %s: %s", query, resp.Status)
			return
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var ev api.WatchEvent[api.Instance]
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Errorf("watch %s: line %q: %v", query, sc.Text(), err)
				return
			}
			if ev.Type != "bookmark" {
				out <- ev
			}
		}
	}()
	return out
}

// next reads the stream's next change; a stream that stays silent for
// long fails the test (a deadline against hanging, not a timing check).
func next(t *testing.T, events <-chan api.WatchEvent[api.Instance]) api.WatchEvent[api.Instance] {
	t.Helper()
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatal("watch stream ended")
		}
		return ev
	case <-time.After(20 * time.Second):
		t.Fatal("no change on the watch stream")
	}
	return api.WatchEvent[api.Instance]{}
}

// eventually polls cond until it holds; it gives up after a generous while.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func hubOf[T any](st *store.Store) *watchHub {
	hubs.Lock()
	defer hubs.Unlock()
	return hubs.m[hubID{st, reflect.TypeFor[T]()}]
}

func hubSubs(st *store.Store) int {
	h := hubOf[api.Instance](st)
	if h == nil {
		return 0
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.subs
}

// Streams of one kind share one hub, and each gets only its node's (or
// app's) changes, in order, in the wire format of a store watch.
func TestHubFilteredDelivery(t *testing.T) {
	hs, st := newServer(t)
	rev := putInstance(t, st, "setup-1", "setup", "n0")
	n1 := openWatch(t, hs.URL, fmt.Sprintf("node=n1&revision=%d", rev))
	n2 := openWatch(t, hs.URL, fmt.Sprintf("node=n2&revision=%d", rev))
	web := openWatch(t, hs.URL, fmt.Sprintf("app=web&revision=%d", rev))
	webN2 := openWatch(t, hs.URL, fmt.Sprintf("app=web&node=n2&revision=%d", rev))
	eventually(t, "4 streams in one hub", func() bool { return hubSubs(st) == 4 })

	r1 := putInstance(t, st, "web-1", "web", "n1")
	putInstance(t, st, "db-1", "db", "n2")
	r3 := putInstance(t, st, "web-2", "web", "n2")
	putInstance(t, st, "db-2", "db", "n3")
	if _, err := st.Txn(context.Background(), store.Instances.DeleteAny("web-1")); err != nil {
		t.Fatal(err)
	}

	if ev := next(t, n1); ev.Type != "put" || ev.Object.Name != "web-1" || ev.Revision != r1 || ev.Object.Version != r1 {
		t.Errorf("n1's first change: %+v; want put web-1 at revision and version %d", ev, r1)
	}
	if ev := next(t, n1); ev.Type != "delete" || ev.Object.Name != "web-1" {
		t.Errorf("n1's second change: %+v; want the delete of web-1", ev)
	}
	for _, want := range []string{"db-1", "web-2"} {
		if ev := next(t, n2); ev.Object.Name != want {
			t.Errorf("n2: got %s, want %s", ev.Object.Name, want)
		}
	}
	for _, want := range []string{"web-1", "web-2", "web-1"} {
		if ev := next(t, web); ev.Object.Name != want {
			t.Errorf("app web: got %s %s, want %s", ev.Type, ev.Object.Name, want)
		}
	}
	if ev := next(t, webN2); ev.Object.Name != "web-2" || ev.Revision != r3 {
		t.Errorf("app web on n2: got %+v, want web-2 at %d", ev, r3)
	}
	// Nothing else came: a change after all the others is the next one.
	last := putInstance(t, st, "web-3", "web", "n2")
	if ev := next(t, n2); ev.Revision != last {
		t.Errorf("n2 got %s at %d, want only web-3 at %d", ev.Object.Name, ev.Revision, last)
	}
	if ev := next(t, webN2); ev.Revision != last {
		t.Errorf("app web on n2 got %s at %d, want only web-3 at %d", ev.Object.Name, ev.Revision, last)
	}
	select {
	case ev := <-n1:
		t.Errorf("n1 got a change of another node: %+v", ev)
	default:
	}
}

// A stream gets every change after its revision: from the hub's history
// when the hub holds them, else from a store watch of its own, moving to
// the hub once it caught up.
func TestHubFromRevision(t *testing.T) {
	defer func(b int64) { hubBackfill = b }(hubBackfill)
	hubBackfill = 0 // the hub starts at its first stream's revision
	hs, st := newServer(t)
	r1 := putInstance(t, st, "a-1", "a", "n1")
	putInstance(t, st, "a-2", "a", "n1")
	r3 := putInstance(t, st, "a-3", "a", "n1")
	first := openWatch(t, hs.URL, fmt.Sprintf("node=n1&revision=%d", r3)) // starts the hub at r3
	eventually(t, "the hub runs", func() bool { return hubSubs(st) == 1 })

	// From before the hub: a-2 and a-3 from the store, then the hub's.
	old := openWatch(t, hs.URL, fmt.Sprintf("node=n1&revision=%d", r1))
	for _, want := range []string{"a-2", "a-3"} {
		if ev := next(t, old); ev.Object.Name != want {
			t.Fatalf("from %d: got %s, want %s", r1, ev.Object.Name, want)
		}
	}
	r4 := putInstance(t, st, "a-4", "a", "n1")
	r5 := putInstance(t, st, "a-5", "a", "n1")
	for _, s := range []<-chan api.WatchEvent[api.Instance]{first, old} {
		for _, want := range []int64{r4, r5} {
			if ev := next(t, s); ev.Revision != want {
				t.Fatalf("got %s at %d, want revision %d", ev.Object.Name, ev.Revision, want)
			}
		}
	}
	eventually(t, "the old stream moved to the hub", func() bool { return hubSubs(st) == 2 })

	// From inside the hub's history: only what came after.
	mid := openWatch(t, hs.URL, fmt.Sprintf("node=n1&revision=%d", r4))
	if ev := next(t, mid); ev.Object.Name != "a-5" || ev.Revision != r5 {
		t.Errorf("from %d: got %s at %d, want a-5 at %d", r4, ev.Object.Name, ev.Revision, r5)
	}
	eventually(t, "3 streams in the hub", func() bool { return hubSubs(st) == 3 })

	// From ahead of what the hub has seen: nothing until after it.
	ahead := openWatch(t, hs.URL, fmt.Sprintf("node=n1&revision=%d", r5+1))
	putInstance(t, st, "other-1", "other", "n2") // r5+1
	r7 := putInstance(t, st, "a-6", "a", "n1")
	if ev := next(t, ahead); ev.Revision != r7 {
		t.Errorf("from %d: got %s at %d, want a-6 at %d", r5+1, ev.Object.Name, ev.Revision, r7)
	}
}

// A compacted revision answers 410, whether or not a hub runs.
func TestHubCompactedRevision(t *testing.T) {
	hs, st := newServer(t)
	old := putInstance(t, st, "a-1", "a", "n1")
	putInstance(t, st, "a-2", "a", "n1")
	cur := putInstance(t, st, "a-3", "a", "n1")
	if _, err := st.Client().Compact(context.Background(), cur); err != nil {
		t.Fatal(err)
	}
	gone := func() {
		t.Helper()
		code, e := call(t, "GET", fmt.Sprintf("%s/v1/instances?node=n1&watch=true&revision=%d", hs.URL, old), "secret", "", "")
		if code != http.StatusGone || e.Field != "revision" {
			t.Errorf("watch from compacted revision %d: %d %+v, want 410 naming revision", old, code, e)
		}
	}
	gone() // no hub
	live := openWatch(t, hs.URL, fmt.Sprintf("node=n1&revision=%d", cur))
	eventually(t, "the hub runs", func() bool { return hubSubs(st) == 1 })
	gone() // a hub from a later revision
	r := putInstance(t, st, "a-4", "a", "n1")
	if ev := next(t, live); ev.Revision != r {
		t.Errorf("the live stream got %+v, want a-4 at %d", ev, r)
	}
}

// A stream that does not keep up leaves the hub, with the changes of whole
// revisions only; it never holds up the others.
func TestHubSlowStreamLeaves(t *testing.T) {
	_, st := newServer(t)
	defer func(q int) { hubQueue = q }(hubQueue)
	hubQueue = 5
	rev := putInstance(t, st, "setup-1", "setup", "n1")
	slow := subscribe(st, store.Instances, rev, watchFilter{Node: "n1"})
	fast := subscribe(st, store.Instances, rev, watchFilter{Node: "n1"})
	if slow == nil || fast == nil {
		t.Fatal("subscribe from the current revision: no place in the hub")
	}
	defer fast.leave()
	const n = 20
	var got []hubEvent
	for i := range n {
		putInstance(t, st, fmt.Sprintf("a-%d", i), "a", "n1")
		// The fast stream takes what it is given as it comes.
		eventually(t, "the fast stream gets every change", func() bool {
			batch, err := fast.take()
			if err != nil {
				t.Fatalf("fast stream ended: %v", err)
			}
			got = append(got, batch...)
			return len(got) == i+1
		})
	}
	batch, err := slow.take()
	if len(batch) != hubQueue || err != nil {
		t.Errorf("slow stream: %d changes waiting (err %v), want the first %d", len(batch), err, hubQueue)
	}
	if batch, err := slow.take(); len(batch) != 0 || err != errBehind {
		t.Errorf("slow stream after its changes: %d more, err %v; want: %v", len(batch), err, errBehind)
	}
	if subs := hubSubs(st); subs != 1 {
		t.Errorf("%d streams in the hub after the slow one left, want 1", subs)
	}
	slow.leave() // as its handler does; a no-op now
}

// gatedWriter is a response that blocks every write until open is
// closed, as a client that stopped reading; it hands out its lines.
type gatedWriter struct {
	header  http.Header
	open    chan struct{}
	lines   chan string
	entered chan struct{} // closed by the first write, which then blocks
	once    sync.Once
}

func (g *gatedWriter) Header() http.Header { return g.header }
func (g *gatedWriter) WriteHeader(int)     {}
func (g *gatedWriter) Flush()              {}
func (g *gatedWriter) Write(b []byte) (int, error) {
	g.once.Do(func() { close(g.entered) })
	<-g.open
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if l != "" {
			g.lines <- l
		}
	}
	return len(b), nil
}

// A stream that falls behind the hub goes on from a store watch of its
// own: it gets every change once, in order, and comes back to the hub.
func TestHubStreamFallsBehindAndCatchesUp(t *testing.T) {
	_, st := newServer(t)
	defer func(q int) { hubQueue = q }(hubQueue)
	hubQueue = 3
	rev := putInstance(t, st, "setup-1", "setup", "n1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &gatedWriter{header: http.Header{}, open: make(chan struct{}), lines: make(chan string, 100), entered: make(chan struct{})}
	r := httptest.NewRequest("GET", "/v1/instances", nil).WithContext(ctx)
	s := &Server{Store: st, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	done := make(chan struct{})
	go func() { streamWatch(s, w, r, store.Instances, rev, watchFilter{Node: "n1"}); close(done) }()
	eventually(t, "the stream in the hub", func() bool { return hubSubs(st) == 1 })

	// The first change blocks the stream in its write (waited for, so that
	// the stream cannot take several in one batch); then 3 wait and the 5th
	// is one too many.
	revs := []int64{putInstance(t, st, "a-0", "a", "n1")}
	select {
	case <-w.entered:
	case <-time.After(20 * time.Second):
		t.Fatal("the stream never wrote the first change")
	}
	for i := 1; i < 6; i++ {
		revs = append(revs, putInstance(t, st, fmt.Sprintf("a-%d", i), "a", "n1"))
	}
	eventually(t, "the stream to leave the hub", func() bool { return hubSubs(st) == 0 })
	close(w.open)
	revs = append(revs, putInstance(t, st, "a-6", "a", "n1"))
	for i, want := range revs {
		var ev api.WatchEvent[api.Instance]
		select {
		case line := <-w.lines:
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("line %q: %v", line, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("change %d never came", i)
		}
		if ev.Object.Name != fmt.Sprintf("a-%d", i) || ev.Revision != want {
			t.Fatalf("change %d: %s %s at %d, want a-%d at %d", i, ev.Type, ev.Object.Name, ev.Revision, i, want)
		}
	}
	eventually(t, "the stream back in the hub", func() bool { return hubSubs(st) == 1 })
	cancel()
	<-done
}

// A bookmark says the revision a stream is up to date with, changes of
// other nodes included; a hub left without streams stops (after hubIdle).
func TestHubProgressAndStop(t *testing.T) {
	_, st := newServer(t)
	rev := putInstance(t, st, "setup-1", "setup", "n1")
	sub := subscribe(st, store.Instances, rev, watchFilter{Node: "n1"})
	if sub == nil {
		t.Fatal("no place in the hub")
	}
	if p := sub.progress(); p != rev {
		t.Errorf("progress before any change: %d, want %d", p, rev)
	}
	other := putInstance(t, st, "b-1", "b", "n2")
	eventually(t, "progress past another node's change", func() bool { return sub.progress() == other })
	mine := putInstance(t, st, "a-1", "a", "n1")
	eventually(t, "a change waits", func() bool {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		return len(sub.queue) == 1
	})
	if p := sub.progress(); p != other {
		t.Errorf("progress with a change waiting: %d, want %d (not past what the stream has not sent)", p, other)
	}
	if batch, _ := sub.take(); len(batch) != 1 || batch[0].Revision != mine {
		t.Fatalf("took %+v, want a-1 at %d", batch, mine)
	}
	if p := sub.progress(); p != mine {
		t.Errorf("progress after taking it: %d, want %d", p, mine)
	}
	defer func(d time.Duration) { hubIdle = d }(hubIdle)
	hubIdle = 0
	sub.leave()
	eventually(t, "the hub stops once left idle", func() bool { return hubOf[api.Instance](st) == nil })
}

// A hub starts a little before the revision of the stream that starts it:
// streams from lists made just before are served by it, not by store
// watches of their own.
func TestHubServesListsFromBefore(t *testing.T) {
	hs, st := newServer(t)
	r1 := putInstance(t, st, "a-1", "a", "n1")
	r2 := putInstance(t, st, "a-2", "a", "n1")
	r3 := putInstance(t, st, "a-3", "a", "n1")
	late := openWatch(t, hs.URL, fmt.Sprintf("node=n1&revision=%d", r3)) // starts the hub
	eventually(t, "the hub runs", func() bool { return hubSubs(st) == 1 })
	eventually(t, "the hub holds changes from before it", func() bool {
		h := hubOf[api.Instance](st)
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.floor < r1
	})
	early := openWatch(t, hs.URL, fmt.Sprintf("node=n1&revision=%d", r1))
	eventually(t, "the early stream in the hub", func() bool { return hubSubs(st) == 2 })
	for _, want := range []int64{r2, r3} {
		if ev := next(t, early); ev.Revision != want {
			t.Fatalf("from %d: got %s at %d, want revision %d", r1, ev.Object.Name, ev.Revision, want)
		}
	}
	r4 := putInstance(t, st, "a-4", "a", "n1")
	for _, s := range []<-chan api.WatchEvent[api.Instance]{late, early} {
		if ev := next(t, s); ev.Revision != r4 {
			t.Errorf("got %s at %d, want a-4 at %d", ev.Object.Name, ev.Revision, r4)
		}
	}
}
