package apiserver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"time"

	"berth/api"
	"berth/internal/store"
)

// Canaries: a deploy that changes the template may start as a canary
// (?canary= or the spec's update.canary): the app record gets its
// CanaryState, the controller runs the canaries beside the stable
// instances and judges them (internal/controller/canary.go), the gateways
// split the traffic. Promote, abort, pause and resume change the record.

// canaryQuery reads ?canary=10% (a weight) or ?canary=2 (instances).
func canaryQuery(w http.ResponseWriter, r *http.Request) (*api.CanaryRequest, bool) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		// Say "10%" must be sent as 10%25 rather than drop the parameter.
		writeError(w, http.StatusBadRequest, "canary", "query %q: %v (a %% in a URL is written %%25: ?canary=10%%25)", r.URL.RawQuery, err)
		return nil, false
	}
	v := q.Get("canary")
	if v == "" {
		return nil, true
	}
	req, err := api.ParseCanaryFlag(v)
	if err != nil {
		writeError(w, http.StatusBadRequest, "canary", "canary: %v", err)
		return nil, false
	}
	return &req, true
}

// startCanary is the canary a deploy from old to app starts, or nil: none
// was asked for (by req or the spec). A deploy during a canary keeps its
// stable side and tries the new template instead.
func startCanary(old, app api.App, req *api.CanaryRequest, now time.Time) (*api.CanaryState, error) {
	policy := app.Spec.CanaryOf()
	if req == nil && policy == nil {
		return nil, nil
	}
	if policy == nil {
		policy = &api.Canary{}
		policy.Default()
	}
	if req != nil && req.Weight != nil {
		policy.Weight = req.Weight
	}
	if req != nil && req.Instances != nil {
		policy.Instances = req.Instances
	}
	if n, replicas := *policy.Instances, app.Spec.ReplicaCount(); n > replicas {
		return nil, &api.FieldError{Field: "canary", Message: fmt.Sprintf("%s for %s: a canary is at most as large as the app",
			api.Count(n, "canary instance"), api.Count(replicas, "replica"))}
	}
	c := &api.CanaryState{Revision: app.Revision, Stable: old.TemplateRevision, StableSpec: old.Spec, StableDigest: old.ImageDigest,
		Weight: *policy.Weight, Instances: *policy.Instances, Policy: *policy, Started: now}
	if prev := old.Canary; prev != nil {
		c.Stable, c.StableSpec, c.StableDigest = prev.Stable, prev.StableSpec, prev.StableDigest
	}
	if d := time.Duration(*policy.Duration); d > 0 {
		c.PromoteAt = now.Add(d)
	}
	return c, nil
}

// rolloutChange applies change to the app named in the request and
// stores it with an event, retrying on a concurrent change; change
// answers itself (and returns false) when the app is in no state for it.
func (s *Server) rolloutChange(w http.ResponseWriter, r *http.Request, kind string,
	change func(w http.ResponseWriter, app *api.App, now time.Time) (msg string, extra []store.Op, ok bool)) {
	name := r.PathValue("name")
	ctx := r.Context()
	for {
		old, ok := s.changeableApp(w, r, name)
		if !ok {
			return
		}
		app, now := old, time.Now().UTC()
		msg, extra, ok := change(w, &app, now)
		if !ok {
			return
		}
		ev, err := s.Store.AppendEvent(ctx, api.Event{Kind: kind, App: name, Message: msg})
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		v, err := s.Store.Txn(ctx, append([]store.Op{store.Apps.Put(name, app, old.Version), ev}, extra...)...)
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

func noCanary(w http.ResponseWriter, app *api.App, what string) bool {
	if app.Canary != nil {
		return false
	}
	writeError(w, http.StatusConflict, "", "app %s has no canary in progress to %s (berth rollout status %s)", app.Spec.Name, what, app.Spec.Name)
	return true
}

// POST /v1/apps/{name}/rollout/promote: the canary becomes a rolling
// update to all replicas.
func (s *Server) promoteRollout(w http.ResponseWriter, r *http.Request) {
	s.rolloutChange(w, r, "promoted", func(w http.ResponseWriter, app *api.App, now time.Time) (string, []store.Op, bool) {
		if noCanary(w, app, "promote") {
			return "", nil, false
		}
		msg := fmt.Sprintf("revision %d: canary promoted by %s: rolling update to %s", app.Revision, by(r), api.Count(app.Spec.ReplicaCount(), "replica"))
		app.Canary, app.Paused = nil, false
		return msg, nil, true
	})
}

// POST /v1/apps/{name}/rollout/abort: the canaries go, all traffic goes
// back to the stable revision, as a new revision.
func (s *Server) abortRollout(w http.ResponseWriter, r *http.Request) {
	s.rolloutChange(w, r, "aborted", func(w http.ResponseWriter, app *api.App, now time.Time) (string, []store.Op, bool) {
		if noCanary(w, app, "abort") {
			return "", nil, false
		}
		ops, msg, err := abortOps(r.Context(), s.Store, app, now, by(r), false, "aborted by "+by(r))
		if err != nil {
			s.writeStoreError(w, err)
			return "", nil, false
		}
		return msg, ops, true
	})
}

// abortOps turns app into its revision after an abort of its canary and
// returns the revision records to write with it: the canary's revision
// marked (aborted, or reverted and bad), the new one.
func abortOps(ctx context.Context, st *store.Store, app *api.App, now time.Time, who string, bad bool, reason string) ([]store.Op, string, error) {
	tried := app.Revision
	next, rec, change := api.CanaryAbort(*app, now, who)
	*app = next
	ops := []store.Op{createRevision(rec)}
	cur, err := store.Revisions.Get(ctx, st, api.RevisionKey(app.Spec.Name, tried))
	switch {
	case err == nil:
		api.MarkCanaryAborted(&cur, now, bad, reason)
		ops = append(ops, store.Revisions.Put(api.RevisionKey(cur.App, cur.Revision), cur, cur.Version))
	case !errors.Is(err, store.ErrNotFound):
		return nil, "", err
	}
	return ops, fmt.Sprintf("revision %d: %s (%s)", app.Revision, change, reason), nil
}

// POST /v1/apps/{name}/rollout/pause and .../resume: hold a canary's
// clock and a rolling update's progress; resume goes on from there.
func (s *Server) pauseRollout(w http.ResponseWriter, r *http.Request) {
	s.rolloutChange(w, r, "paused", func(w http.ResponseWriter, app *api.App, now time.Time) (string, []store.Op, bool) {
		if app.Paused {
			writeError(w, http.StatusConflict, "", "the rollout of %s is paused already", app.Spec.Name)
			return "", nil, false
		}
		app.Paused = true
		if c := app.Canary; c != nil && !c.PromoteAt.IsZero() {
			c2 := *c
			c2.Left, c2.PromoteAt = api.Duration(max(c.PromoteAt.Sub(now), 0)), time.Time{}
			app.Canary = &c2
		}
		return fmt.Sprintf("revision %d: rollout paused by %s", app.Revision, by(r)), nil, true
	})
}

func (s *Server) resumeRollout(w http.ResponseWriter, r *http.Request) {
	s.rolloutChange(w, r, "resumed", func(w http.ResponseWriter, app *api.App, now time.Time) (string, []store.Op, bool) {
		if !app.Paused {
			writeError(w, http.StatusConflict, "", "the rollout of %s is not paused", app.Spec.Name)
			return "", nil, false
		}
		app.Paused = false
		if c := app.Canary; c != nil && c.Left > 0 {
			c2 := *c
			c2.PromoteAt, c2.Left = now.Add(c.Left.D()), 0
			app.Canary = &c2
		}
		return fmt.Sprintf("revision %d: rollout resumed by %s", app.Revision, by(r)), nil, true
	})
}

// GET /v1/apps/{name}/rollout: the phase, each revision's instances and,
// during a canary, the traffic the gateways saw of each side since it
// started.
func (s *Server) rolloutStatus(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	name := r.PathValue("name")
	app, err := store.Apps.Get(ctx, s.Store, name)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	insts, _, err := store.Instances.List(ctx, s.Store)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	cur, err := store.Revisions.Get(ctx, s.Store, api.RevisionKey(name, app.Revision))
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		s.writeStoreError(w, err)
		return
	}
	st := api.RolloutStatus{App: name, Revision: app.Revision, Outcome: cur.Outcome, Paused: app.Paused}
	byRev := map[int64]*api.RolloutRevision{}
	side := func(rev int64, role, image string) *api.RolloutRevision {
		if byRev[rev] == nil {
			byRev[rev] = &api.RolloutRevision{Revision: rev, Role: role, Image: image}
		}
		return byRev[rev]
	}
	c := app.Canary
	if c != nil {
		stable := api.Percent(10000) - c.Weight
		side(c.Stable, "stable", c.StableSpec.Image).Weight = &stable
		side(app.TemplateRevision, "canary", app.Spec.Image).Weight = &c.Weight
	} else {
		side(app.TemplateRevision, "new", app.Spec.Image)
	}
	for _, inst := range insts {
		if inst.App != name || inst.Desired == api.DesiredStop || inst.Desired == api.DesiredKeep {
			continue
		}
		rr := side(inst.Revision, "old", inst.Spec.Image)
		rr.Total++
		if inst.Routable() {
			rr.Healthy++
		}
	}
	switch {
	case app.Idled:
		st.Phase = api.PhaseIdled
	case app.Paused:
		st.Phase = api.PhasePaused
	case c != nil:
		st.Phase = api.PhaseCanary
	case cur.Outcome == api.OutcomeRollingOut:
		st.Phase = api.PhaseRolling
	case cur.Outcome == api.OutcomeFailed:
		st.Phase = api.PhaseFailedStop
	default:
		st.Phase = api.PhaseRolledOut
	}
	if c != nil {
		policy := c.Policy
		st.Canary, st.Since = &policy, c.Started
		reports, _, err := store.Traffic.List(ctx, s.Store)
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		for rev, t := range api.TrafficOf(name, c.Stable, app.TemplateRevision, reports, time.Now(), api.TrafficStale) {
			if rr := byRev[rev]; rr != nil {
				t.Buckets = nil
				rr.Traffic = t
			}
		}
		switch {
		case !c.PromoteAt.IsZero():
			st.Deadline, st.Next = c.PromoteAt, "promoted if its traffic is within the limits, aborted if not"
		case app.Paused:
			st.Next = fmt.Sprintf("paused with %s left: berth rollout resume %s", c.Left.D().Round(time.Second), name)
		default:
			st.Next = "promoted by hand: berth rollout promote " + name
		}
	} else if st.Phase == api.PhaseRolling && !cur.Created.IsZero() {
		u := app.Spec.UpdateOf()
		st.Next = fmt.Sprintf("fails if no new instance becomes healthy for %s (progress deadline)", u.ProgressDeadline.D())
	}
	for _, rr := range byRev {
		st.Revisions = append(st.Revisions, *rr)
	}
	slices.SortFunc(st.Revisions, func(a, b api.RolloutRevision) int { return cmp.Compare(b.Revision, a.Revision) })
	writeJSON(w, http.StatusOK, st)
}

// POST /v1/gateway/traffic: a gateway's counts per app and revision,
// kept (one record per gateway) for canary judgement and status.
func (s *Server) postTraffic(w http.ResponseWriter, r *http.Request) {
	var rep api.GatewayTraffic
	if !decodeJSON(w, r, &rep) {
		return
	}
	if err := api.ValidAppName("gateway", rep.Gateway); err != nil {
		writeFieldError(w, err)
		return
	}
	if len(rep.Apps) > 10000 {
		writeError(w, http.StatusBadRequest, "apps", "apps: %d in one report, at most 10000", len(rep.Apps))
		return
	}
	rep.Updated, rep.Version = time.Now().UTC(), 0
	if _, err := s.Store.Txn(r.Context(), store.Traffic.PutAny(rep.Gateway, rep)); err != nil {
		s.writeStoreError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
