package apiserver

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"time"

	json "github.com/goccy/go-json"

	"berth/internal/store"
)

// A watch hub shares one store watch of a kind among all the API's watch
// streams of that kind in this process. Each change is read once for the
// fields streams filter on (its node and app) and handed only to the
// streams that want it: with a thousand agents each watching its own
// node's instances, a change costs one small decode and one delivery, not
// a thousand decodes in a thousand store watches.
//
// The hub keeps its recent changes, so that a stream starting from the
// revision of a list made a moment before is served from it too. A stream
// from further back (the hub started after its revision), or one that
// falls behind (the hub waits for no one), gets a store watch of its own
// until it has caught up (see streamWatch). A hub runs until its store
// watch ends (the store closes); streams that come then start a new one.

// watchFilter says which changes of a kind a watch stream gets. Node and
// App compare the record's top-level "node" and "app" fields, which the
// hub reads once per change for all streams; Match (nil: any) is for what
// those cannot say, and is called per stream.
type watchFilter struct {
	Node, App string
	Match     func(record []byte) bool
}

func (f watchFilter) wants(ev *hubEvent) bool {
	return ev.Value != nil && (f.Node == "" || ev.node == f.Node) && (f.App == "" || ev.app == f.App) &&
		(f.Match == nil || f.Match(ev.Value))
}

// hubHistory is how many recent changes a hub keeps for streams that start
// a little behind it; hubQueue is how many changes may wait for one stream
// before it leaves the hub; hubBackfill is how many revisions before its
// first stream a hub starts (see startHub). Variables for tests.
var (
	hubHistory        = 65536
	hubQueue          = 16384
	hubBackfill int64 = 5000
	hubIdle           = time.Minute
)

// errBehind: the stream let hubQueue changes pile up unsent and left the
// hub, which does not wait for anyone; it goes on from a store watch of
// its own, as one from an old revision does.
var errBehind = errors.New("watch stream fell behind the hub")

var errIdle = errors.New("watch hub left without streams")

type hubID struct {
	st   *store.Store
	kind reflect.Type
}

// hubs are the running hubs; the lock is taken before any hub's.
var hubs = struct {
	sync.Mutex
	m map[hubID]*watchHub
}{m: map[hubID]*watchHub{}}

type watchHub struct {
	id     hubID
	cancel context.CancelFunc

	mu      sync.Mutex
	byNode  map[string]map[*hubSub]struct{} // streams of one node
	rest    map[*hubSub]struct{}            // streams of any node
	subs    int
	history []hubEvent // oldest first
	floor   int64      // every change after floor is in history or still to come
	seen    int64      // newest revision handed out
	idle    int        // times it was left without streams
	done    bool
}

// hubEvent is a change with the fields streams are routed by.
type hubEvent struct {
	store.RawEvent
	node, app string
}

// routeView is what the hub reads of every record.
type routeView struct {
	Node string `json:"node"`
	App  string `json:"app"`
}

func routed(ev store.RawEvent) hubEvent {
	he := hubEvent{RawEvent: ev}
	if ev.Value != nil {
		var v routeView
		if json.Unmarshal(ev.Value, &v) == nil {
			he.node, he.app = v.Node, v.App
		}
	}
	return he
}

// hubSub is one stream's place in a hub: the changes waiting for it.
type hubSub struct {
	hub    *watchHub
	filter watchFilter
	from   int64         // the stream wants changes after this revision
	wake   chan struct{} // signalled when queue or err changes

	mu      sync.Mutex
	queue   []hubEvent
	err     error // why the stream leaves the hub once queue is sent: the hub ended, or errBehind
	written int64 // revision of the newest change taken by the stream
}

// subscribe adds a stream of kind's changes after rev that match f,
// starting the kind's hub if none runs. It returns nil when the hub does
// not hold every change after rev: the stream needs a store watch of its
// own for now.
func subscribe[T any](st *store.Store, kind store.Kind[T], rev int64, f watchFilter) *hubSub {
	id := hubID{st, reflect.TypeFor[T]()}
	hubs.Lock()
	defer hubs.Unlock()
	h := hubs.m[id]
	if h == nil {
		h = startHub(id, kind, rev)
		hubs.m[id] = h
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if rev < h.floor {
		return nil
	}
	sub := &hubSub{hub: h, filter: f, from: rev, written: rev, wake: make(chan struct{}, 1)}
	for i := range h.history {
		if ev := &h.history[i]; ev.Revision > rev && f.wants(ev) {
			sub.queue = append(sub.queue, *ev)
		}
	}
	if len(sub.queue) > 0 {
		sub.signal()
	}
	h.add(sub)
	return sub
}

// startHub starts a hub for a stream from rev. Its store watch starts
// hubBackfill revisions earlier, so that streams from lists made a little
// before (a thousand agents that list at once, then watch) are served by
// it too; the hub holds them once it knows that revision is not compacted.
func startHub[T any](id hubID, kind store.Kind[T], rev int64) *watchHub {
	ctx, cancel := context.WithCancel(context.Background())
	from := max(rev-hubBackfill, 0)
	h := &watchHub{id: id, cancel: cancel, byNode: map[string]map[*hubSub]struct{}{},
		rest: map[*hubSub]struct{}{}, floor: rev, seen: from}
	go h.run(func(from int64) (<-chan store.RawEvent, <-chan error) { return kind.WatchRaw(ctx, id.st, from) }, from, rev)
	return h
}

func (h *watchHub) add(sub *hubSub) {
	h.subs++
	if n := sub.filter.Node; n != "" {
		if h.byNode[n] == nil {
			h.byNode[n] = map[*hubSub]struct{}{}
		}
		h.byNode[n][sub] = struct{}{}
		return
	}
	h.rest[sub] = struct{}{}
}

func (h *watchHub) remove(sub *hubSub) {
	set := h.rest
	if n := sub.filter.Node; n != "" {
		set = h.byNode[n]
	}
	if _, ok := set[sub]; !ok {
		return
	}
	delete(set, sub)
	if n := sub.filter.Node; n != "" && len(set) == 0 {
		delete(h.byNode, n)
	}
	h.subs--
}

// run hands out the store watch's changes until it ends, then ends every
// stream with its error. The watch starts at from; if that is compacted,
// at rev.
func (h *watchHub) run(watch func(from int64) (<-chan store.RawEvent, <-chan error), from, rev int64) {
	for {
		events, errc := watch(from)
		got := h.serve(events, from)
		err := errors.New("store watch closed")
		select {
		case err = <-errc:
		default:
		}
		if !got && from < rev && errors.Is(err, store.ErrCompacted) {
			from = rev
			continue
		}
		h.stop(err)
		return
	}
}

// serve hands out changes of a watch from revision from; it reports
// whether there were any.
func (h *watchHub) serve(events <-chan store.RawEvent, from int64) (got bool) {
	for ev := range events {
		he := routed(ev)
		h.mu.Lock()
		if h.done {
			h.mu.Unlock()
			return true // stopped: the next one to come starts a new hub
		}
		if !got {
			got = true
			h.floor = min(h.floor, from) // a change came: from is not compacted
		}
		h.history = append(h.history, he)
		if len(h.history) > hubHistory {
			h.floor = max(h.floor, h.history[0].Revision)
			h.history = h.history[1:]
		}
		h.seen = max(h.seen, ev.Revision)
		if he.Value != nil {
			for sub := range h.byNode[he.node] {
				h.offer(sub, &he)
			}
			for sub := range h.rest {
				h.offer(sub, &he)
			}
		}
		h.mu.Unlock()
	}
	return got
}

// offer queues a change for a stream if it wants it. A stream with too
// many waiting leaves the hub rather than let the others wait; it leaves
// between two revisions, so that it can go on from the last it was given.
// h.mu is held.
func (h *watchHub) offer(sub *hubSub, ev *hubEvent) {
	if ev.Revision <= sub.from || !sub.filter.wants(ev) {
		return
	}
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if n := len(sub.queue); n >= hubQueue && ev.Revision > sub.queue[n-1].Revision {
		sub.err = errBehind
		h.remove(sub)
	} else {
		sub.queue = append(sub.queue, *ev)
	}
	sub.signal()
}

// stop ends the hub after its store watch failed: every stream ends with
// err, and the next one to come starts a new hub.
func (h *watchHub) stop(err error) {
	hubs.Lock()
	defer hubs.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.end(err)
}

// end is stop with hubs and h.mu held.
func (h *watchHub) end(err error) {
	if h.done {
		return
	}
	if hubs.m[h.id] == h {
		delete(hubs.m, h.id)
	}
	h.done = true
	for _, set := range append([]map[*hubSub]struct{}{h.rest}, mapsOf(h.byNode)...) {
		for sub := range set {
			sub.end(err)
		}
	}
	h.byNode, h.rest, h.subs, h.history = nil, nil, 0, nil
	h.cancel()
}

func mapsOf(m map[string]map[*hubSub]struct{}) []map[*hubSub]struct{} {
	out := make([]map[*hubSub]struct{}, 0, len(m))
	for _, s := range m {
		out = append(out, s)
	}
	return out
}

func (s *hubSub) end(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
	s.signal()
}

func (s *hubSub) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// take returns the changes waiting and, once there are none, why the
// stream is over (nil while it is not).
func (s *hubSub) take() ([]hubEvent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queue
	s.queue = nil
	if len(q) > 0 {
		s.written = max(s.written, q[len(q)-1].Revision)
		return q, nil
	}
	return nil, s.err
}

// progress is the revision the stream is up to date with, for a bookmark:
// the hub's newest when nothing waits for the stream, else the one before
// the first change waiting.
func (s *hubSub) progress() int64 {
	h := s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case len(s.queue) > 0:
		return max(s.written, s.queue[0].Revision-1)
	case s.err == nil && !h.done:
		return max(s.written, h.seen)
	}
	return s.written
}

// leave takes the stream out of its hub. A hub without streams goes on
// for hubIdle, for the streams that come back at once (an agent that
// lists again): starting and cancelling store watches by the thousand is
// what etcd's in-process client copes with worst (it can deadlock:
// etcd-io/etcd#20716).
func (s *hubSub) leave() {
	h := s.hub
	h.mu.Lock()
	h.remove(s)
	idle := h.subs == 0 && !h.done
	if idle {
		h.idle++
	}
	gen := h.idle
	h.mu.Unlock()
	if idle {
		time.AfterFunc(hubIdle, func() { h.stopIdle(gen) })
	}
}

// stopIdle stops the hub if no stream came since it was left idle the
// gen-th time.
func (h *watchHub) stopIdle(gen int) {
	hubs.Lock()
	defer hubs.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs == 0 && h.idle == gen {
		h.end(errIdle)
	}
}
