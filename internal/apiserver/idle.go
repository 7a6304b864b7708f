package apiserver

import (
	"errors"
	"net/http"
	"sort"
	"time"

	"berth/api"
	"berth/internal/store"
)

// wakeApp brings an idled app back: its instances are started again.
// Waking an app that is not idle changes nothing.
func (s *Server) wakeApp(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	now := time.Now().UTC()
	ev, err := s.Store.AppendEvent(r.Context(), api.Event{Kind: "woken", App: name, Message: "a request arrived"})
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	var notIdleEnabled bool
	app, err := store.Apps.Update(r.Context(), s.Store, name, func(a *api.App) error {
		if a.Spec.Idle == nil {
			notIdleEnabled = true
			return store.ErrSkip
		}
		if !a.Idled {
			return store.ErrSkip
		}
		a.Idled, a.WokenAt = false, now
		return nil
	}, ev, store.Access.PutAny(name, api.Access{App: name, Last: now}))
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	if notIdleEnabled {
		writeError(w, http.StatusConflict, "", "app %s has no idle policy: it is never scaled to zero", name)
		return
	}
	writeJSON(w, http.StatusAccepted, app)
}

// postAccess records when apps last got a request. Gateways batch these;
// only newer times are written.
func (s *Server) postAccess(w http.ResponseWriter, r *http.Request) {
	var rep api.AccessReport
	if !decodeJSON(w, r, &rep) {
		return
	}
	names := make([]string, 0, len(rep.Apps))
	for n := range rep.Apps {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := s.recordAccess(r, name, rep.Apps[name]); err != nil {
			s.writeStoreError(w, err)
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// recordAccess moves an app's last access forward to t, never back.
func (s *Server) recordAccess(r *http.Request, name string, t time.Time) error {
	ctx := r.Context()
	for {
		cur, err := store.Access.Get(ctx, s.Store, name)
		var op store.Op
		switch {
		case errors.Is(err, store.ErrNotFound):
			op = store.Access.Create(name, api.Access{App: name, Last: t})
		case err != nil:
			return err
		case !t.After(cur.Last):
			return nil
		default:
			op = store.Access.Put(name, api.Access{App: name, Last: t}, cur.Version)
		}
		_, err = s.Store.Txn(ctx, op)
		if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrExists) {
			continue
		}
		return err
	}
}

// listRoutes answers host -> app -> routable instances, idle state, last access.
func (s *Server) listRoutes(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	apps, _, err := store.Apps.List(ctx, s.Store)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	insts, _, err := store.Instances.List(ctx, s.Store)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	access, _, err := store.Access.List(ctx, s.Store)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	last := map[string]time.Time{}
	for _, a := range access {
		last[a.App] = a.Last
	}
	addrs := map[string][]string{}
	for _, i := range insts {
		if i.Routable() {
			addrs[i.App] = append(addrs[i.App], i.Status.Address)
		}
	}
	routes := []api.Route{}
	for _, a := range apps {
		for _, h := range a.Spec.Routes {
			rt := api.Route{Host: h, App: a.Spec.Name, Instances: addrs[a.Spec.Name], Idle: a.Idled, LastAccess: last[a.Spec.Name]}
			if rt.Instances == nil {
				rt.Instances = []string{}
			}
			if a.Spec.Idle != nil {
				rt.IdleAfter = a.Spec.Idle.StopAfter.String()
			}
			routes = append(routes, rt)
		}
	}
	sort.Slice(routes, func(i, j int) bool { return routes[i].Host < routes[j].Host })
	writeJSON(w, http.StatusOK, api.List[api.Route]{Items: routes})
}
