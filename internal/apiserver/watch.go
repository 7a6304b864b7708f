package apiserver

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"berth/api"
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
// api.WatchEvent, keeping only those that match. An idle stream gets a
// bookmark line now and then, so that both ends notice a dead connection.
// A revision that is too old answers 410: the client lists again.
func streamWatch[T any](s *Server, w http.ResponseWriter, r *http.Request, kind store.Kind[T], rev int64, match func(*T) bool) {
	ctx := r.Context()
	events, errc := kind.Watch(ctx, s.Store, rev)
	flusher, _ := w.(http.Flusher)
	started := false
	start := func() {
		if !started {
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(http.StatusOK)
			started = true
		}
	}
	enc := json.NewEncoder(w)
	bookmark := time.NewTicker(15 * time.Second)
	defer bookmark.Stop()
	last := rev
	unflushed := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-bookmark.C:
			start()
			_ = enc.Encode(api.WatchEvent[*T]{Type: "bookmark", Revision: last})
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
			if match(&ev.Object) {
				typ := "put"
				if ev.Deleted {
					typ = "delete"
				}
				start()
				if err := enc.Encode(api.WatchEvent[T]{Type: typ, Object: ev.Object, Revision: ev.Revision}); err != nil {
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
