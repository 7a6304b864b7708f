package controller

import (
	"context"
	"errors"
	"fmt"
	"time"

	"berth/api"
	"berth/internal/store"
)

// A canary (api.CanaryState on the app) runs Instances instances of the
// app's current template beside the replicas of the stable one; the
// gateways split the traffic. Each pass judges it on what the gateways
// counted since it started (api.TrafficOf): too many errors, or
// canaries that do not get healthy within the progress deadline, abort it
// and mark its revision bad; at PromoteAt it is promoted when its figures
// are within the limits (latency too, once both sides have enough
// requests), aborted when not.

// canaryMinRequests is how many requests a side needs before its error
// rate or latency is judged: a handful of requests says little.
const canaryMinRequests = 20

// planCanary plans the two sides of a canary, each as its own template,
// new instances taking indexes neither side uses.
func planCanary(app api.App, instances []api.Instance, nodes map[string]string, now time.Time) Plan {
	c := app.Canary
	var stable, canary []api.Instance
	used := map[int]bool{}
	for _, inst := range instances {
		used[inst.Index] = true
		if inst.Revision == app.TemplateRevision {
			canary = append(canary, inst)
		} else {
			stable = append(stable, inst)
		}
	}
	sApp := app
	sApp.Canary = nil
	sApp.Spec = c.StableSpec
	sApp.Spec.Replicas = app.Spec.Replicas
	sApp.TemplateRevision, sApp.ImageDigest = c.Stable, c.StableDigest
	cApp := app
	cApp.Canary, cApp.Paused = nil, false
	n := c.Instances
	cApp.Spec.Replicas = &n
	p := planApp(sApp, stable, nodes, now, used)
	pc := planApp(cApp, canary, nodes, now, used)
	for k, v := range pc.Retire {
		p.Retire[k] = v
	}
	for k, v := range pc.Lost {
		p.Lost[k] = v
	}
	p.Create = append(p.Create, pc.Create...)
	p.Idle = append(p.Idle, pc.Idle...)
	p.Resume = append(p.Resume, pc.Resume...)
	if p.RecheckAt.IsZero() || (!pc.RecheckAt.IsZero() && pc.RecheckAt.Before(p.RecheckAt)) {
		p.RecheckAt = pc.RecheckAt
	}
	p.DeleteApp = false
	return p
}

// judgeCanary decides on an app's canary: nothing yet, promote or abort.
func (c *Controller) judgeCanary(ctx context.Context, app *api.App, a *appScan, r *rollout, now time.Time) error {
	cs := app.Canary
	if app.Paused || app.Idled {
		r.progressAt = now // the deadline counts while it runs only
		return nil
	}
	healthy := 0
	if a != nil {
		healthy = a.healthy
	}
	if healthy > r.healthy {
		r.healthy, r.progressAt = healthy, now
	}
	u := app.Spec.UpdateOf()
	if deadline := u.ProgressDeadline.D(); healthy < cs.Instances && now.Sub(r.progressAt) >= deadline {
		reason := fmt.Sprintf("canary: %d of %s healthy after %s (progress deadline)", healthy, api.Count(cs.Instances, "instance"), deadline)
		if a != nil && a.problem != "" {
			reason += "; " + a.problem
		}
		return c.abortCanary(ctx, app, reason, now)
	}
	reports, _, err := store.Traffic.List(ctx, c.Store)
	if err != nil {
		return err
	}
	traffic := api.TrafficOf(app.Spec.Name, cs.Stable, app.TemplateRevision, reports, now, api.TrafficStale)
	tried, stable := traffic[app.TemplateRevision], traffic[cs.Stable]
	if tried == nil {
		tried = &api.RevisionTraffic{}
	}
	limit := cs.Policy.MaxErrorRate.Fraction()
	if tried.Requests >= canaryMinRequests && tried.ErrorRate > limit {
		return c.abortCanary(ctx, app, fmt.Sprintf("canary: %.1f%% of %d requests failed (5xx or no connection), limit %s",
			100*tried.ErrorRate, tried.Requests, cs.Policy.MaxErrorRate), now)
	}
	if cs.PromoteAt.IsZero() || now.Before(cs.PromoteAt) {
		return nil
	}
	if healthy < cs.Instances {
		return c.abortCanary(ctx, app, fmt.Sprintf("canary: %d of %s healthy at its promotion", healthy, api.Count(cs.Instances, "instance")), now)
	}
	ratio := *cs.Policy.MaxP99Ratio
	if ratio > 0 && stable != nil && tried.Requests >= canaryMinRequests && stable.Requests >= canaryMinRequests &&
		stable.P99 > 0 && tried.P99/stable.P99 > ratio {
		return c.abortCanary(ctx, app, fmt.Sprintf("canary: p99 %s against the stable revision's %s (%.2f times, limit %g)",
			seconds(tried.P99), seconds(stable.P99), tried.P99/stable.P99, ratio), now)
	}
	figures := fmt.Sprintf("%d requests, %.2f%% failed", tried.Requests, 100*tried.ErrorRate)
	if tried.Requests > 0 {
		figures += ", p99 " + seconds(tried.P99)
	}
	next := *app
	next.Canary = nil
	ev, err := c.Store.AppendEvent(ctx, api.Event{Kind: "promoted", App: app.Spec.Name,
		Message: fmt.Sprintf("revision %d: canary promoted after %s (%s): rolling update to %s",
			app.Revision, now.Sub(cs.Started).Round(time.Second), figures, api.Count(app.Spec.ReplicaCount(), "replica"))})
	if err != nil {
		return err
	}
	_, err = c.Store.Txn(ctx, store.Apps.Put(app.Spec.Name, next, app.Version), ev)
	if errors.Is(err, store.ErrConflict) {
		return nil // changed meanwhile: judged again next pass
	}
	if err == nil {
		c.Log.Info("canary promoted", "app", app.Spec.Name, "revision", app.Revision, "traffic", figures)
	}
	return err
}

// abortCanary ends a canary that failed: the app goes back to the stable
// template as a new revision, and the canary's revision is marked bad.
func (c *Controller) abortCanary(ctx context.Context, app *api.App, reason string, now time.Time) error {
	name, tried := app.Spec.Name, app.Revision
	next, rec, change := api.CanaryAbort(*app, now, autoRevertBy)
	ops := []store.Op{store.Apps.Put(name, next, app.Version), store.Revisions.Create(api.RevisionKey(name, rec.Revision), rec)}
	cur, err := store.Revisions.Get(ctx, c.Store, api.RevisionKey(name, tried))
	switch {
	case err == nil:
		api.MarkCanaryAborted(&cur, now, true, reason)
		ops = append(ops, store.Revisions.Put(api.RevisionKey(name, tried), cur, cur.Version))
	case !errors.Is(err, store.ErrNotFound):
		return err
	}
	ev, err := c.Store.AppendEvent(ctx, api.Event{Kind: "reverted", App: name,
		Message: fmt.Sprintf("revision %d: %s: revision %d marked bad: %s", next.Revision, change, tried, reason)})
	if err != nil {
		return err
	}
	_, err = c.Store.Txn(ctx, append(ops, ev)...)
	if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrExists) {
		delete(c.rollouts, name)
		return nil
	}
	if err != nil {
		return err
	}
	c.Log.Warn("canary aborted", "app", name, "revision", tried, "reason", reason)
	delete(c.rollouts, name)
	return nil
}

func seconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(100 * time.Microsecond).String()
}
