package controller

import (
	"context"
	"log/slog"
	"time"

	"berth/internal/store"
)

// mirror is an in-memory copy of one kind's records, fed by a list and a
// watch, and by this process's own writes, which it may learn of before
// the watch brings them. It keeps the newest version of each record, so
// that an event still in flight never takes a record back in time.
// A mirror is not safe for concurrent use: its owner serialises access.
type mirror[T any] struct {
	items   map[string]*T
	name    func(*T) string
	version func(*T) *int64
	// keep says whether a record is worth holding (e.g. only active tasks);
	// one that is not is forgotten, remembering only its version while an
	// older event about it may still be on its way.
	keep func(*T) bool
	// changed, if set, is told of every change: old or new is nil for a
	// record that appears or goes.
	changed func(name string, old, new *T)

	gone   map[string]int64 // forgotten after our own write at this revision
	listed int64            // revision of the last list: older events are stale
	seen   int64            // newest revision the watch has brought
	loaded bool
}

func newMirror[T any](name func(*T) string, version func(*T) *int64) *mirror[T] {
	return &mirror[T]{items: map[string]*T{}, name: name, version: version,
		keep: func(*T) bool { return true }, gone: map[string]int64{}}
}

// known is the newest version held of name, or 0.
func (m *mirror[T]) known(name string) int64 {
	if v, ok := m.items[name]; ok {
		return *m.version(v)
	}
	return m.gone[name]
}

func (m *mirror[T]) set(name string, v *T) {
	old := m.items[name]
	if v != nil && m.keep(v) {
		m.items[name] = v
	} else {
		if old == nil {
			return
		}
		delete(m.items, name)
		v = nil
	}
	if m.changed != nil {
		m.changed(name, old, v)
	}
}

// reset replaces the records with a list read at revision rev, keeping
// what our own writes made after it.
func (m *mirror[T]) reset(items []T, rev int64) {
	fresh := make(map[string]*T, len(items))
	names := make(map[string]bool, len(items))
	for i := range items {
		fresh[m.name(&items[i])] = &items[i]
	}
	for name := range m.items {
		names[name] = true
	}
	for name := range fresh {
		names[name] = true
	}
	for name := range m.gone {
		names[name] = true
	}
	for name := range names {
		if m.known(name) > rev {
			continue // our write is newer than the list
		}
		delete(m.gone, name)
		m.set(name, fresh[name])
	}
	m.listed, m.seen, m.loaded = rev, rev, true
}

// event applies one change from the watch.
func (m *mirror[T]) event(ev store.Event[T]) {
	if ev.Revision <= m.listed {
		return // from a watch before the last list
	}
	m.seen = max(m.seen, ev.Revision)
	if ev.Revision <= m.known(ev.Name) {
		return // we wrote it, or something newer, already
	}
	delete(m.gone, ev.Name)
	if ev.Deleted {
		m.set(ev.Name, nil)
		return
	}
	v := ev.Object
	m.set(ev.Name, &v)
}

// wrote records our own successful write of v at revision rev.
func (m *mirror[T]) wrote(name string, v T, rev int64) {
	if rev <= m.known(name) {
		return
	}
	*m.version(&v) = rev
	m.set(name, &v)
	if _, ok := m.items[name]; !ok {
		m.gone[name] = rev
	}
}

// forget drops the versions of forgotten records that the watch has
// passed: no older event about them can come any more.
func (m *mirror[T]) forget() {
	for name, rev := range m.gone {
		if rev <= m.seen {
			delete(m.gone, name)
		}
	}
}

// follow streams a kind to apply (run on the owner's goroutine): a reset
// with the full list, then each change; after a watch error (a compacted
// revision, a lost leader) or a call of relist, it lists again.
func follow[T any](ctx context.Context, s *store.Store, log *slog.Logger, kind store.Kind[T], m *mirror[T], apply func(func()) bool, relist <-chan struct{}) {
	for ctx.Err() == nil {
		items, rev, err := kind.List(ctx, s)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			log.Warn("list for the task controller", "err", err)
			sleepCtx(ctx, time.Second)
			continue
		}
		if !apply(func() { m.reset(items, rev) }) {
			return
		}
		wctx, cancel := context.WithCancel(ctx)
		events, errc := kind.Watch(wctx, s, rev)
	watch:
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					break watch
				}
				if !apply(func() { m.event(ev) }) {
					cancel()
					return
				}
			case <-relist:
				break watch
			}
		}
		cancel()
		select {
		case err := <-errc:
			if ctx.Err() == nil {
				log.Info("watch for the task controller ended; listing again", "err", err)
				sleepCtx(ctx, 100*time.Millisecond) // not a tight loop if it keeps failing
			}
		default:
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
