package apiserver

import (
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

// streamWatch writes the kind's changes after rev as NDJSON lines of
// api.WatchEvent, keeping only those that match (nil: all). Records pass
// through as stored, without a decode and encode. An idle stream gets a
// bookmark line now and then, so that both ends notice a dead connection.
// A revision that is too old answers 410: the client lists again.
func streamWatch[T any](s *Server, w http.ResponseWriter, r *http.Request, kind store.Kind[T], rev int64, match func(record []byte) bool) {
	ctx := r.Context()
	events, errc := kind.WatchRaw(ctx, s.Store, rev)
	flusher, _ := w.(http.Flusher)
	started := false
	start := func() {
		if !started {
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(http.StatusOK)
			started = true
		}
	}
	bookmark := time.NewTicker(15 * time.Second)
	defer bookmark.Stop()
	last := rev
	unflushed := false
	var line []byte
	for {
		select {
		case <-ctx.Done():
			return
		case <-bookmark.C:
			start()
			_, _ = w.Write(watchLine(line[:0], "bookmark", nil, last))
			if flusher != nil {
				flusher.Flush()
			}
		case ev, ok := <-events:
			if !ok {
				err := <-errc
				if !started && errors.Is(err, store.ErrCompacted) {
					writeError(w, http.StatusGone, "revision", "revision %d is compacted: list again", rev)
				}
				return
			}
			last = ev.Revision
			if ev.Value != nil && (match == nil || match(ev.Value)) {
				typ := "put"
				if ev.Deleted {
					typ = "delete"
				}
				start()
				line = watchLine(line[:0], typ, ev.JSON(), ev.Revision)
				if _, err := w.Write(line); err != nil {
					return
				}
				unflushed = true
			}
			// Flush once the burst that arrived together is written, whether
			// or not its last event matched.
			if unflushed && len(events) == 0 && flusher != nil {
				flusher.Flush()
				unflushed = false
			}
		}
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
