package apiserver

import (
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"sort"
	"strconv"
	"time"

	"berth/api"
	"berth/internal/store"
)

func (s *Server) listApps(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("watch") == "true" {
		if rev, ok := watchRevision(w, r); ok {
			streamWatch(s, w, r, store.Apps, rev, watchFilter{})
		}
		return
	}
	apps, rev, err := store.Apps.List(r.Context(), s.Store)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	sort.Slice(apps, func(i, j int) bool { return apps[i].Spec.Name < apps[j].Spec.Name })
	writeJSON(w, http.StatusOK, api.List[api.App]{Items: apps, Revision: rev})
}

func (s *Server) getApp(w http.ResponseWriter, r *http.Request) {
	app, err := store.Apps.Get(r.Context(), s.Store, r.PathValue("name"))
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, app)
}

// putApp creates or changes an app. The body is the app spec in JSON, or
// YAML with a YAML content type. Nothing is stored unless all of it is valid.
func (s *Server) putApp(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	var spec api.AppSpec
	var err error
	if wantsYAML(r) {
		spec, err = api.ParseAppSpec(body)
	} else {
		err = api.DecodeStrict(body, &spec)
	}
	if err != nil {
		writeFieldError(w, err)
		return
	}
	name := r.PathValue("name")
	if spec.Name == "" {
		spec.Name = name
	}
	if spec.Name != name {
		writeError(w, http.StatusBadRequest, "name", "name: %q does not match the URL's %q", spec.Name, name)
		return
	}
	named := spec.Replicas != nil // a spec without replicas keeps the current count
	spec.Default()
	maxMem, err := s.largestNodeMemory(r)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	if err := spec.Validate(maxMem); err != nil {
		writeFieldError(w, err)
		return
	}
	canaryReq, ok := canaryQuery(w, r)
	if !ok {
		return
	}
	digest, ok := s.resolveImage(w, r, spec.Image)
	if !ok {
		return
	}

	now := time.Now().UTC()
	ctx := r.Context()
	for {
		old, err := store.Apps.Get(ctx, s.Store, name)
		if errors.Is(err, store.ErrNotFound) {
			if canaryReq != nil {
				writeError(w, http.StatusBadRequest, "canary", "canary: app %s does not exist yet: its first revision has no stable revision to be a canary of", name)
				return
			}
			app := api.App{Spec: spec, Revision: 1, TemplateRevision: 1, ImageDigest: digest, Created: now, Updated: now}
			routeOps, ok := s.claimRoutes(w, r, name, nil, spec.Routes)
			if !ok {
				return
			}
			ev, err := s.Store.AppendEvent(ctx, api.Event{Kind: "deployed", App: name, Message: fmt.Sprintf("revision 1: %s, %s", spec.Image, api.Count(spec.ReplicaCount(), "replica"))})
			if err != nil {
				s.writeStoreError(w, err)
				return
			}
			// The history goes with the app (the controller removes both);
			// revision 1 is written whatever is there.
			first := revisionOf(app, "created: "+spec.Image, by(r), 0)
			ops := []store.Op{store.Apps.Create(name, app), store.Revisions.PutAny(api.RevisionKey(name, 1), first), ev}
			rev, err := s.Store.Txn(ctx, append(ops, routeOps...)...)
			if errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrConflict) {
				continue // created or claimed concurrently: look again
			}
			if err != nil {
				s.writeStoreError(w, err)
				return
			}
			app.Version = rev
			writeJSON(w, http.StatusCreated, app)
			return
		}
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		if old.Deleting {
			writeError(w, http.StatusConflict, "name", "app %s is being removed; deploy again once it is gone", name)
			return
		}
		if !named {
			spec.Replicas = old.Spec.Replicas
		}
		if reflect.DeepEqual(old.Spec, spec) && old.ImageDigest == digest {
			writeJSON(w, http.StatusOK, old) // unchanged: no new revision
			return
		}
		history, err := s.listRevisionsOf(ctx, name)
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		if bad := badTwin(history, spec, digest); bad != nil && r.URL.Query().Get("force") != "true" &&
			(!api.SameTemplate(old.Spec, spec) || old.ImageDigest != digest) {
			writeError(w, http.StatusConflict, "spec", "spec: this is the template of revision %d, which was reverted as bad (%s); deploy it again with --force",
				bad.Revision, bad.Reason)
			return
		}
		app := old
		app.Spec = spec
		app.Revision++
		app.Updated = now
		app.ImageDigest = digest
		msg := fmt.Sprintf("revision %d: %s", app.Revision, replicasChange(old.Spec.ReplicaCount(), spec.ReplicaCount(), named))
		// The same tag pushed again is another image: a rolling update.
		if !api.SameTemplate(old.Spec, spec) || old.ImageDigest != digest {
			app.TemplateRevision = app.Revision
			app.Paused = false
			msg = fmt.Sprintf("revision %d: %s, %s, rolling update", app.Revision, spec.Image, replicasChange(old.Spec.ReplicaCount(), spec.ReplicaCount(), named))
			c, err := startCanary(old, app, canaryReq, now)
			if err != nil {
				writeFieldError(w, err)
				return
			}
			if app.Canary = c; c != nil {
				msg = fmt.Sprintf("revision %d: %s, canary: %s with %s of the traffic beside %s of revision %d",
					app.Revision, spec.Image, api.Count(c.Instances, "instance"), c.Weight, api.Count(spec.ReplicaCount(), "replica"), c.Stable)
			}
		} else if canaryReq != nil {
			writeError(w, http.StatusBadRequest, "canary", "canary: this deploy does not change what an instance runs (only replicas, routes or policies): there is nothing to try as a canary")
			return
		}
		routeOps, ok := s.claimRoutes(w, r, name, old.Spec.Routes, spec.Routes)
		if !ok {
			return
		}
		ev, err := s.Store.AppendEvent(ctx, api.Event{Kind: "deployed", App: name, Message: msg})
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		ops := []store.Op{store.Apps.Put(name, app, old.Version), ev,
			createRevision(revisionOf(app, api.ChangeSummary(old.Spec, spec, old.ImageDigest, digest), by(r), 0))}
		rev, err := s.Store.Txn(ctx, append(ops, routeOps...)...)
		if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrExists) {
			continue
		}
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		app.Version = rev
		writeJSON(w, http.StatusOK, app)
		return
	}
}

// replicasChange says what a deploy does to the number of replicas: a
// spec that names replicas sets it, one that omits it keeps the count
// (which `berth scale` may have changed).
func replicasChange(was, now int, named bool) string {
	switch {
	case !named:
		return api.Count(now, "replica") + " (kept: the spec names none)"
	case was != now:
		return fmt.Sprintf("replicas %d -> %d, from the spec", was, now)
	}
	return api.Count(now, "replica")
}

// claimRoutes returns the ops that move an app's host claims from old to
// new routes. A host another app owns answers 409 naming that app. The
// Create ops fail the transaction if someone claims a host meanwhile.
func (s *Server) claimRoutes(w http.ResponseWriter, r *http.Request, app string, old, new []string) ([]store.Op, bool) {
	had := map[string]bool{}
	for _, h := range old {
		had[h] = true
	}
	var ops []store.Op
	for _, h := range new {
		if had[h] {
			delete(had, h)
			continue
		}
		claim, err := store.Routes.Get(r.Context(), s.Store, h)
		switch {
		case err == nil && claim.App != app:
			writeError(w, http.StatusConflict, "routes", "routes: host %s is already routed to app %s", h, claim.App)
			return nil, false
		case err == nil:
			ops = append(ops, store.Routes.Put(h, claim, claim.Version))
		case errors.Is(err, store.ErrNotFound):
			ops = append(ops, store.Routes.Create(h, api.RouteClaim{Host: h, App: app}))
		default:
			s.writeStoreError(w, err)
			return nil, false
		}
	}
	for h := range had {
		ops = append(ops, store.Routes.DeleteAny(h))
	}
	return ops, true
}

// largestNodeMemory bounds a spec's memory: more than any node has could never run.
func (s *Server) largestNodeMemory(r *http.Request) (api.Bytes, error) {
	nodes, _, err := store.Nodes.List(r.Context(), s.Store)
	if err != nil {
		return 0, err
	}
	var max api.Bytes
	for _, n := range nodes {
		if n.Capacity.Memory > max {
			max = n.Capacity.Memory
		}
	}
	return max, nil
}

func (s *Server) deleteApp(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	ev, err := s.Store.AppendEvent(r.Context(), api.Event{Kind: "deleted", App: name, Message: "removing all instances"})
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	app, err := store.Apps.Update(r.Context(), s.Store, name, func(a *api.App) error {
		if a.Deleting {
			return store.ErrSkip
		}
		a.Deleting = true
		a.Updated = time.Now().UTC()
		return nil
	}, ev)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, app)
}

func (s *Server) scaleApp(w http.ResponseWriter, r *http.Request) {
	var req api.ScaleRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	if req.Replicas < 0 || req.Replicas > api.MaxReplicas {
		writeError(w, http.StatusBadRequest, "replicas", "replicas: %d is out of range 0-%d", req.Replicas, api.MaxReplicas)
		return
	}
	name := r.PathValue("name")
	ctx := r.Context()
	for {
		old, ok := s.changeableApp(w, r, name)
		if !ok {
			return
		}
		if old.Spec.ReplicaCount() == req.Replicas {
			writeJSON(w, http.StatusOK, old)
			return
		}
		app := old
		app.Spec.Replicas = &req.Replicas
		app.Revision++
		app.Updated = time.Now().UTC()
		ev, err := s.Store.AppendEvent(ctx, api.Event{Kind: "scaled", App: name, Message: "replicas " + strconv.Itoa(req.Replicas)})
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		change := fmt.Sprintf("scale: replicas %d -> %d", old.Spec.ReplicaCount(), req.Replicas)
		v, err := s.Store.Txn(ctx, store.Apps.Put(name, app, old.Version), ev, createRevision(revisionOf(app, change, by(r), 0)))
		if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrExists) {
			continue
		}
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		app.Version = v
		writeJSON(w, http.StatusOK, app)
		return
	}
}

// changeableApp reads an app a request is about to change, or answers
// why it cannot: it does not exist (404) or is being removed (409).
func (s *Server) changeableApp(w http.ResponseWriter, r *http.Request, name string) (api.App, bool) {
	app, err := store.Apps.Get(r.Context(), s.Store, name)
	switch {
	case err != nil:
		s.writeStoreError(w, err)
	case app.Deleting:
		writeError(w, http.StatusConflict, "name", "app %s is being removed", name)
	default:
		return app, true
	}
	return app, false
}
