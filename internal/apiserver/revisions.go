package apiserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"time"

	"berth/api"
	"berth/internal/store"
)

// Every accepted change of an app is a revision record (api.Revision),
// written in the transaction that changes the app; the controller's
// rollout tracker (internal/controller/rollout.go) decides its outcome.

// by names who makes a request's changes: its token's description.
func by(r *http.Request) string {
	p := principalOf(r.Context())
	switch {
	case p.desc != "":
		return p.desc
	case p.token != "":
		return "token " + p.token
	}
	return ""
}

// revisionOf is the record of the app's current revision.
func revisionOf(app api.App, change, who string, rollbackOf int64) api.Revision {
	return api.Revision{
		App: app.Spec.Name, Revision: app.Revision, Spec: app.Spec, ImageDigest: app.ImageDigest,
		Created: app.Updated, Change: change, By: who, Template: app.TemplateRevision,
		RollbackOf: rollbackOf, Outcome: api.OutcomeRollingOut,
	}
}

func createRevision(rev api.Revision) store.Op {
	return store.Revisions.Create(api.RevisionKey(rev.App, rev.Revision), rev)
}

// listRevisionsOf reads an app's history, oldest first.
func (s *Server) listRevisionsOf(ctx context.Context, app string) ([]api.Revision, error) {
	return store.Revisions.ListUnder(ctx, s.Store, app+"/")
}

// badTwin is the revision marked bad whose template and image a deploy
// would roll out again, if there is one.
func badTwin(history []api.Revision, spec api.AppSpec, digest string) *api.Revision {
	for i := len(history) - 1; i >= 0; i-- {
		h := &history[i]
		if h.Bad && h.ImageDigest == digest && api.SameTemplate(h.Spec, spec) {
			return h
		}
	}
	return nil
}

// GET /v1/apps/{name}/revisions: the app's kept history, newest first.
func (s *Server) listRevisions(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	app, err := store.Apps.Get(r.Context(), s.Store, name)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	history, err := s.listRevisionsOf(r.Context(), name)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	slices.Reverse(history)
	writeJSON(w, http.StatusOK, api.List[api.Revision]{Items: history, Revision: app.Version})
}

// GET /v1/apps/{name}/revisions/{rev}
func (s *Server) getRevision(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	n, err := strconv.ParseInt(r.PathValue("rev"), 10, 64)
	if err != nil || n < 1 {
		writeError(w, http.StatusBadRequest, "revision", "revision: %q is not a revision number", r.PathValue("rev"))
		return
	}
	rev, ok := s.revisionOr404(w, r, name, n)
	if ok {
		writeJSON(w, http.StatusOK, rev)
	}
}

// revisionOr404 reads revision n of an app, or answers why it cannot.
func (s *Server) revisionOr404(w http.ResponseWriter, r *http.Request, name string, n int64) (api.Revision, bool) {
	app, err := store.Apps.Get(r.Context(), s.Store, name)
	if err != nil {
		s.writeStoreError(w, err)
		return api.Revision{}, false
	}
	rev, err := store.Revisions.Get(r.Context(), s.Store, api.RevisionKey(name, n))
	switch {
	case errors.Is(err, store.ErrNotFound) && n > app.Revision:
		writeError(w, http.StatusNotFound, "revision", "revision: %s has no revision %d (its latest is %d)", name, n, app.Revision)
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, "revision", "revision: %d of %s is no longer kept (history_limit %d; see berth history %s)",
			n, name, app.Spec.HistoryLimitOf(), name)
	case err != nil:
		s.writeStoreError(w, err)
	default:
		return rev, true
	}
	return api.Revision{}, false
}

// POST /v1/apps/{name}/rollback {"revision": N}: a new revision copied
// from N (default: the last that rolled out before the current one).
func (s *Server) rollbackApp(w http.ResponseWriter, r *http.Request) {
	var req api.RollbackRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	if req.Revision < 0 {
		writeError(w, http.StatusBadRequest, "revision", "revision: %d is not a revision number", req.Revision)
		return
	}
	name := r.PathValue("name")
	ctx := r.Context()
	for {
		old, ok := s.changeableApp(w, r, name)
		if !ok {
			return
		}
		history, err := s.listRevisionsOf(ctx, name)
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		var target api.Revision
		if req.Revision == 0 {
			good := api.LastGood(history, old.Revision)
			if good == nil {
				writeError(w, http.StatusConflict, "revision", "revision: %s has no earlier revision that rolled out to go back to (berth history %s)", name, name)
				return
			}
			target = *good
		} else {
			t, ok := s.revisionOr404(w, r, name, req.Revision)
			if !ok {
				return
			}
			target = t
		}
		if target.Revision == old.Revision {
			writeError(w, http.StatusConflict, "revision", "revision: %s runs revision %d already", name, old.Revision)
			return
		}
		app := old
		app.Spec, app.ImageDigest = target.Spec, target.ImageDigest
		app.Revision++
		app.Updated = time.Now().UTC()
		app.TemplateRevision = api.TemplateAfterRollback(old, target, app.Revision)
		app.Canary, app.Paused = nil, false // a canary in progress ends with the rollback
		if reflect.DeepEqual(old.Spec, app.Spec) && old.ImageDigest == app.ImageDigest {
			writeError(w, http.StatusConflict, "revision", "revision: %s runs the spec of revision %d already (revision %d is the same)", name, target.Revision, old.Revision)
			return
		}
		change := fmt.Sprintf("rollback to revision %d", target.Revision)
		rec := revisionOf(app, change, by(r), target.Revision)
		ops := []store.Op{store.Apps.Put(name, app, old.Version), createRevision(rec)}
		if cur, err := store.Revisions.Get(ctx, s.Store, api.RevisionKey(name, old.Revision)); err == nil && !cur.Bad {
			cur.Outcome, cur.Settled = api.OutcomeRolledBack, app.Updated
			ops = append(ops, store.Revisions.Put(api.RevisionKey(name, cur.Revision), cur, cur.Version))
		}
		routeOps, ok := s.claimRoutes(w, r, name, old.Spec.Routes, app.Spec.Routes)
		if !ok {
			return
		}
		ev, err := s.Store.AppendEvent(ctx, api.Event{Kind: "rolled-back", App: name,
			Message: fmt.Sprintf("revision %d: %s (%s), rolling update", app.Revision, change, app.Spec.Image)})
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		v, err := s.Store.Txn(ctx, append(append(ops, ev), routeOps...)...)
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
