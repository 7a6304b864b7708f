package apiserver

import (
	"net/http"
	"sort"

	"berth/api"
	"berth/internal/store"
)

// GET /v1/queues: every queue that has a record or an active task, with
// its counts, sorted by name.
func (s *Server) listQueues(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	records, _, err := store.Queues.List(ctx, s.Store)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	all, rev, err := store.Tasks.List(ctx, s.Store)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	byName := map[string]*api.QueueStatus{}
	status := func(name string) *api.QueueStatus {
		q := byName[name]
		if q == nil {
			q = &api.QueueStatus{Name: name}
			byName[name] = q
		}
		return q
	}
	for _, q := range records {
		status(q.Name).Concurrency = q.Concurrency
	}
	for i := range all {
		switch t := &all[i]; t.State {
		case api.TaskQueued, api.TaskRetrying:
			status(t.Spec.Queue).Queued++
		case api.TaskRunning:
			status(t.Spec.Queue).Running++
		}
	}
	items := make([]api.QueueStatus, 0, len(byName))
	for _, q := range byName {
		items = append(items, *q)
	}
	sort.Slice(items, func(i, j int) bool { return items[i].Name < items[j].Name })
	writeJSON(w, http.StatusOK, api.List[api.QueueStatus]{Items: items, Revision: rev})
}

// PUT /v1/queues/{name}: a queue's settings, created or replaced.
func (s *Server) putQueue(w http.ResponseWriter, r *http.Request) {
	var q api.Queue
	if !decodeJSON(w, r, &q) {
		return
	}
	name := r.PathValue("name")
	if q.Name == "" {
		q.Name = name
	}
	if q.Name != name {
		writeError(w, http.StatusBadRequest, "name", "name: %q does not match the URL's %q", q.Name, name)
		return
	}
	if err := q.Validate(); err != nil {
		writeFieldError(w, err)
		return
	}
	q.Version = 0
	rev, err := s.Store.Txn(r.Context(), store.Queues.PutAny(name, q))
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	q.Version = rev
	writeJSON(w, http.StatusOK, q)
}
