package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"berth/internal/store"
)

// watchRevision reads ?revision=N: a watch streams changes after N.
func watchRevision(w http.ResponseWriter, r *http.Request) (int64, bool) {
	v := r.URL.Query().Get("revision")
	if v == "" {
		writeError(w, http.StatusBadRequest, "revision", "revision: a watch needs the revision of a list to start from")
		return 0, false
	}
	rev, err := strconv.ParseInt(v, 10, 64)
	if err != nil || rev < 0 {
		writeError(w, http.StatusBadRequest, "revision", "revision: %q is not a revision", v)
		return 0, false
	}
	return rev, true
}

// streamWatch writes the kind's changes after rev that f lets through as
// NDJSON lines of api.WatchEvent. Records pass through as stored, without
// a decode and encode. An idle stream gets a bookmark line now and then,
// so that both ends notice a dead connection. A revision that is too old
// answers 410: the client lists again.
//
// The changes come from the kind's watch hub (watchhub.go). A stream from
// a revision older than the hub's history, or one that fell behind the
// hub, goes on from a store watch of its own and moves back to the hub
// once it has caught up with it.
func streamWatch[T any](s *Server, w http.ResponseWriter, r *http.Request, kind store.Kind[T], rev int64, f watchFilter) {
	ctx := r.Context()
	out := newWatchWriter(w)
	bookmark := time.NewTicker(watchBookmark)
	defer bookmark.Stop()
	sub := subscribe(s.Store, kind, rev, f)
	for {
		if sub == nil {
			if sub = catchUp(ctx, s, out, kind, rev, f, bookmark.C); sub == nil {
				return
			}
		}
		last, behind := fromHub(ctx, out, sub, bookmark.C)
		sub.leave()
		if !behind {
			return
		}
		rev, sub = last, nil // on from the last change sent
	}
}

// fromHub streams a hub's changes until the stream ends, or falls behind
// the hub: then it returns the revision of the last change sent.
func fromHub(ctx context.Context, out *watchWriter, sub *hubSub, bookmark <-chan time.Time) (last int64, behind bool) {
	for {
		select {
		case <-ctx.Done():
			return 0, false
		case <-bookmark:
			if out.bookmark(sub.progress()) != nil {
				return 0, false
			}
		case <-sub.wake:
			for {
				batch, err := sub.take()
				if len(batch) == 0 {
					if errors.Is(err, errBehind) {
						return sub.written, true
					}
					if err != nil {
						out.end(sub.from, err)
						return 0, false
					}
					break
				}
				for i := range batch {
					if out.event(&batch[i].RawEvent) != nil {
						return 0, false
					}
				}
			}
			out.flush()
		}
	}
}

// catchUp streams from a store watch of the stream's own until the hub
// holds every change after the last one sent, and returns the stream's
// place in the hub then; nil when the stream ended first.
func catchUp[T any](ctx context.Context, s *Server, out *watchWriter, kind store.Kind[T], rev int64, f watchFilter, bookmark <-chan time.Time) *hubSub {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, errc := kind.WatchRaw(ctx, s.Store, rev)
	last := rev
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-bookmark:
			if out.bookmark(last) != nil {
				return nil
			}
		case ev, ok := <-events:
			if !ok {
				select {
				case err := <-errc: // why, unless ctx ended
					out.end(rev, err)
				case <-ctx.Done():
				}
				return nil
			}
			// A new revision: all of the last one was sent (a revision's
			// changes come together), so the hub can take over from there
			// if it holds what came after; this change it sends again.
			if ev.Revision > last {
				if sub := subscribe(s.Store, kind, last, f); sub != nil {
					return sub
				}
			}
			last = ev.Revision
			if he := routed(ev); f.wants(&he) && out.event(&ev) != nil {
				return nil
			}
			// Flush once the burst that arrived together is written.
			if len(events) == 0 {
				out.flush()
			}
		}
	}
}

// watchBookmark is how often an idle stream gets a bookmark line;
// watchWriteTimeout is how long one write to a stream may block before
// the stream is given up (a client that stopped reading).
const (
	watchBookmark     = 15 * time.Second
	watchWriteTimeout = 30 * time.Second
)

// watchWriter writes a watch stream's lines; the status line goes out with
// the first of them, so that a stream that fails at once can still answer
// 410.
type watchWriter struct {
	w         http.ResponseWriter
	rc        *http.ResponseController
	started   bool
	unflushed bool
	line      []byte
}

func newWatchWriter(w http.ResponseWriter) *watchWriter {
	return &watchWriter{w: w, rc: http.NewResponseController(w)}
}

func (o *watchWriter) write(typ string, object []byte, rev int64) error {
	if !o.started {
		o.w.Header().Set("Content-Type", "application/x-ndjson")
		o.w.WriteHeader(http.StatusOK)
		o.started = true
	}
	if !o.unflushed {
		_ = o.rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
	}
	o.line = watchLine(o.line[:0], typ, object, rev)
	_, err := o.w.Write(o.line)
	o.unflushed = true
	return err
}

// event writes a change; a delete whose record is not known writes nothing.
func (o *watchWriter) event(ev *store.RawEvent) error {
	if ev.Value == nil {
		return nil
	}
	typ := "put"
	if ev.Deleted {
		typ = "delete"
	}
	return o.write(typ, ev.JSON(), ev.Revision)
}

func (o *watchWriter) bookmark(rev int64) error {
	if err := o.write("bookmark", nil, rev); err != nil {
		return err
	}
	o.flush()
	return nil
}

func (o *watchWriter) flush() {
	if !o.unflushed {
		return
	}
	_ = o.rc.Flush()
	_ = o.rc.SetWriteDeadline(time.Time{})
	o.unflushed = false
}

// end closes a stream that its store watch or hub ended: with 410 if rev
// was compacted and nothing was sent yet; else the stream just ends and
// the client lists again.
func (o *watchWriter) end(rev int64, err error) {
	switch {
	case !o.started && errors.Is(err, store.ErrCompacted):
		writeError(o.w, http.StatusGone, "revision", "revision %d is compacted: list again", rev)
	default:
		o.flush()
	}
}

// watchLine appends one api.WatchEvent line with object as its (already
// encoded) object, or null.
func watchLine(b []byte, typ string, object []byte, rev int64) []byte {
	b = append(b, `{"type":"`...)
	b = append(b, typ...)
	b = append(b, `","object":`...)
	if object == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, object...)
	}
	b = append(b, `,"revision":`...)
	b = strconv.AppendInt(b, rev, 10)
	return append(b, "}\n"...)
}

// matching turns a filter on decoded records into one on stored records.
// F may be a narrow view of the record (only the fields the filter reads),
// which is cheaper to decode than the whole record.
func matching[F any](keep func(*F) bool) func([]byte) bool {
	return func(record []byte) bool {
		var v F
		return json.Unmarshal(record, &v) == nil && keep(&v)
	}
}
