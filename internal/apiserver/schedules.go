package apiserver

import (
	"errors"
	"net/http"
	"sort"
	"time"

	"berth/api"
	"berth/internal/store"
)

// GET /v1/schedules: all schedules, sorted by name.
func (s *Server) listSchedules(w http.ResponseWriter, r *http.Request) {
	all, rev, err := store.Schedules.List(r.Context(), s.Store)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	writeJSON(w, http.StatusOK, api.List[api.Schedule]{Items: all, Revision: rev})
}

func (s *Server) getSchedule(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	sc, err := store.Schedules.Get(r.Context(), s.Store, name)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "", "schedule %s not found", name)
		return
	}
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, sc)
}

// putSchedule creates or replaces a schedule. A new one starts with its
// last run now, so that it first fires at its next time; a replaced one
// keeps its last run and task. Those fields of the body are ignored.
func (s *Server) putSchedule(w http.ResponseWriter, r *http.Request) {
	var sc api.Schedule
	if !decodeJSON(w, r, &sc) {
		return
	}
	name := r.PathValue("name")
	if sc.Name == "" {
		sc.Name = name
	}
	if sc.Name != name {
		writeError(w, http.StatusBadRequest, "name", "name: %q does not match the URL's %q", sc.Name, name)
		return
	}
	sc.Default()
	maxMem, err := s.largestNodeMemory(r)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	if err := sc.Validate(maxMem); err != nil {
		writeFieldError(w, err)
		return
	}
	ctx := r.Context()
	for {
		old, err := store.Schedules.Get(ctx, s.Store, name)
		var op store.Op
		code := http.StatusOK
		switch {
		case errors.Is(err, store.ErrNotFound):
			now := time.Now().UTC()
			sc.LastRun, sc.LastTask, sc.Created, sc.Version = now, "", now, 0
			op, code = store.Schedules.Create(name, sc), http.StatusCreated
		case err != nil:
			s.writeStoreError(w, err)
			return
		default:
			sc.LastRun, sc.LastTask, sc.Created, sc.Version = old.LastRun, old.LastTask, old.Created, 0
			op = store.Schedules.Put(name, sc, old.Version)
		}
		rev, err := s.Store.Txn(ctx, op)
		if errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrConflict) {
			continue // created or fired meanwhile: again on what is there now
		}
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		sc.Version = rev
		writeJSON(w, code, sc)
		return
	}
}

// DELETE /v1/schedules/{name}: 204; tasks it made stay.
func (s *Server) deleteSchedule(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	ctx := r.Context()
	for {
		sc, err := store.Schedules.Get(ctx, s.Store, name)
		if errors.Is(err, store.ErrNotFound) {
			writeError(w, http.StatusNotFound, "", "schedule %s not found", name)
			return
		}
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		_, err = s.Store.Txn(ctx, store.Schedules.Delete(name, sc.Version))
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
}
