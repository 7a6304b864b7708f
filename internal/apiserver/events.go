package apiserver

import (
	"net/http"
	"strconv"

	"berth/api"
	"berth/internal/store"
)

// GET /v1/events?app=&limit=N[&watch=true&revision=N]
func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	app := q.Get("app")
	match := func(e *api.Event) bool { return app == "" || e.App == app }
	if q.Get("watch") == "true" {
		rev, ok := watchRevision(w, r)
		if ok {
			streamWatch(s, w, r, store.Events, rev, watchFilter{App: app})
		}
		return
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, "limit", "limit: %q is not a positive number", v)
			return
		}
		limit = n
	}
	all, rev, err := store.Events.List(r.Context(), s.Store)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	items := all[:0]
	for i := range all {
		if match(&all[i]) {
			items = append(items, all[i])
		}
	}
	if len(items) > limit {
		items = items[len(items)-limit:]
	}
	writeJSON(w, http.StatusOK, api.List[api.Event]{Items: items, Revision: rev})
}
