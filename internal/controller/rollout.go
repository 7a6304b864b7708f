package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"berth/api"
	"berth/internal/store"
)

// The rollout tracker decides the outcome of each app's current revision
// (api.Revision): rolled out once every instance of its template is
// healthy and no older one is left; failed when no new instance became
// healthy for update.progress_deadline, and then, with auto_revert, the
// app goes back to its last revision that rolled out, as a new revision,
// and the failed one is marked bad. It runs in every pass of the
// controller from the pass's counts, so it reads nothing per instance.
// Progress is kept in memory: a new leader gives a rollout a full
// deadline again from its start.

// rollout is what the tracker knows of an app's current revision.
type rollout struct {
	rev        api.Revision // as last read or written
	healthy    int          // healthy instances of the template at progressAt
	progressAt time.Time
}

// autoRevertBy is the author of a revert.
const autoRevertBy = "berth (auto-revert)"

// trackRollouts judges the rollout of every app of the pass.
func (c *Controller) trackRollouts(ctx context.Context, apps []api.App, s *scan, now time.Time) error {
	if c.rollouts == nil {
		c.rollouts = map[string]*rollout{}
	}
	live := make(map[string]bool, len(apps))
	var errs []error
	for i := range apps {
		app := &apps[i]
		live[app.Spec.Name] = true
		if app.Deleting {
			continue
		}
		if err := c.trackRollout(ctx, app, s.apps[app.Spec.Name], now); err != nil {
			errs = append(errs, fmt.Errorf("rollout of %s: %w", app.Spec.Name, err))
		}
	}
	for name := range c.rollouts {
		if !live[name] {
			delete(c.rollouts, name)
		}
	}
	return errors.Join(errs...)
}

func (c *Controller) trackRollout(ctx context.Context, app *api.App, a *appScan, now time.Time) error {
	name := app.Spec.Name
	r := c.rollouts[name]
	if r == nil || r.rev.Revision != app.Revision {
		prev := r
		rev, err := store.Revisions.Get(ctx, c.Store, api.RevisionKey(name, app.Revision))
		if errors.Is(err, store.ErrNotFound) {
			// An app from before revisions were kept: its history starts
			// here, written when its outcome is known.
			rev = api.Revision{App: name, Revision: app.Revision, Spec: app.Spec, ImageDigest: app.ImageDigest, Created: app.Updated,
				Change: "recorded (the revisions before it were not kept)", Template: app.TemplateRevision, Outcome: api.OutcomeRollingOut}
		} else if err != nil {
			return err
		}
		r = &rollout{rev: rev, progressAt: latest(rev.Created, c.started)}
		if r.progressAt.IsZero() {
			r.progressAt = now
		}
		c.rollouts[name] = r
		if prev != nil && prev.rev.Revision < rev.Revision {
			if err := c.supersede(ctx, name, prev.rev.Revision, rev.Revision); err != nil {
				return err
			}
		}
		if err := c.pruneHistory(ctx, app); err != nil {
			return err
		}
	}
	if app.Canary != nil {
		return c.judgeCanary(ctx, app, a, r, now)
	}
	if r.rev.Outcome != api.OutcomeRollingOut {
		return nil
	}
	if app.Paused {
		r.progressAt = now // the deadline counts while it runs only
		return nil
	}
	want := app.Spec.ReplicaCount()
	current, healthy, old, problem := 0, 0, false, ""
	if a != nil {
		current, healthy, old, problem = a.current, a.healthy, a.old, a.problem
	}
	switch {
	case want == 0 || current == want && healthy == want && !old:
		return c.settle(ctx, r, now, api.OutcomeRolledOut, false, "")
	case app.Idled:
		r.progressAt = now // nothing runs to judge until it is woken
		return nil
	case healthy > r.healthy:
		r.healthy, r.progressAt = healthy, now
		return nil
	}
	u := app.Spec.UpdateOf()
	deadline := time.Duration(*u.ProgressDeadline)
	if now.Sub(r.progressAt) < deadline {
		return nil
	}
	reason := fmt.Sprintf("no new instance became healthy for %s (%d of %d healthy)", deadline, healthy, want)
	if problem != "" {
		reason += "; " + problem
	}
	if *u.AutoRevert {
		return c.revert(ctx, app, r, reason, now)
	}
	if err := c.settle(ctx, r, now, api.OutcomeFailed, false, reason); err != nil {
		return err
	}
	_, err := c.appendEvent(ctx, api.Event{Kind: "rollout-failed", App: name, Message: fmt.Sprintf("revision %d: %s", r.rev.Revision, reason)})
	return err
}

// settle writes a revision's outcome.
func (c *Controller) settle(ctx context.Context, r *rollout, now time.Time, outcome string, bad bool, reason string) error {
	rev := r.rev
	rev.Outcome, rev.Bad, rev.Reason, rev.Settled = outcome, bad, reason, now
	write := store.Revisions.Put(api.RevisionKey(rev.App, rev.Revision), rev, rev.Version)
	if rev.Version == 0 {
		write = store.Revisions.Create(api.RevisionKey(rev.App, rev.Revision), rev)
	}
	v, err := c.Store.Txn(ctx, write)
	if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrExists) {
		delete(c.rollouts, rev.App) // changed meanwhile (a rollback): read again
		return nil
	}
	if err != nil {
		return err
	}
	rev.Version = v
	r.rev = rev
	if outcome == api.OutcomeRolledOut {
		c.Log.Info("rolled out", "app", rev.App, "revision", rev.Revision)
	}
	return nil
}

// supersede marks the revisions from prev up to (not including) cur that
// are still rolling out: a newer one came before they settled.
func (c *Controller) supersede(ctx context.Context, app string, prev, cur int64) error {
	for n := prev; n < cur; n++ {
		_, err := store.Revisions.Update(ctx, c.Store, api.RevisionKey(app, n), func(r *api.Revision) error {
			if r.Outcome != api.OutcomeRollingOut {
				return store.ErrSkip
			}
			r.Outcome, r.Settled = api.OutcomeSuperseded, time.Now().UTC()
			return nil
		})
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
	}
	return nil
}

// revert fails the current revision as bad and, in the same transaction,
// gives the app a new revision copied from its last good one.
func (c *Controller) revert(ctx context.Context, app *api.App, r *rollout, reason string, now time.Time) error {
	name := app.Spec.Name
	history, err := store.Revisions.ListUnder(ctx, c.Store, name+"/")
	if err != nil {
		return err
	}
	good := api.LastGood(history, app.Revision)
	if good == nil {
		reason += "; no earlier revision rolled out to revert to"
		if err := c.settle(ctx, r, now, api.OutcomeFailed, false, reason); err != nil {
			return err
		}
		_, err := c.appendEvent(ctx, api.Event{Kind: "rollout-failed", App: name, Message: fmt.Sprintf("revision %d: %s", app.Revision, reason)})
		return err
	}
	next := *app
	next.Spec, next.ImageDigest = good.Spec, good.ImageDigest
	next.Revision++
	next.Updated = now
	next.TemplateRevision = api.TemplateAfterRollback(*app, *good, next.Revision)
	failed := r.rev
	failed.Outcome, failed.Bad, failed.Reason, failed.Settled = api.OutcomeReverted, true, reason, now
	change := fmt.Sprintf("revert to revision %d: revision %d failed", good.Revision, app.Revision)
	rec := api.Revision{App: name, Revision: next.Revision, Spec: next.Spec, ImageDigest: next.ImageDigest, Created: now,
		Change: change, By: autoRevertBy, Template: next.TemplateRevision, RollbackOf: good.Revision, Outcome: api.OutcomeRollingOut}
	ev, err := c.Store.AppendEvent(ctx, api.Event{Kind: "reverted", App: name,
		Message: fmt.Sprintf("revision %d: back to revision %d (%s): revision %d marked bad: %s", next.Revision, good.Revision, next.Spec.Image, app.Revision, reason)})
	if err != nil {
		return err
	}
	mark := store.Revisions.Put(api.RevisionKey(name, failed.Revision), failed, failed.Version)
	if failed.Version == 0 {
		mark = store.Revisions.Create(api.RevisionKey(name, failed.Revision), failed)
	}
	_, err = c.Store.Txn(ctx, store.Apps.Put(name, next, app.Version), mark,
		store.Revisions.Create(api.RevisionKey(name, rec.Revision), rec), ev)
	if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrExists) {
		delete(c.rollouts, name) // the app changed meanwhile: judge it afresh
		return nil
	}
	if err != nil {
		return err
	}
	c.Log.Warn("rollout reverted", "app", name, "failed_revision", app.Revision, "to", good.Revision, "reason", reason)
	delete(c.rollouts, name)
	return nil
}

// pruneHistory drops the revisions beyond the app's history_limit, oldest
// first; the current one always stays.
func (c *Controller) pruneHistory(ctx context.Context, app *api.App) error {
	limit := app.Spec.HistoryLimitOf()
	history, err := store.Revisions.ListUnder(ctx, c.Store, app.Spec.Name+"/")
	if err != nil || len(history) <= limit {
		return err
	}
	var ops []store.Op
	for _, h := range history[:len(history)-limit] {
		if h.Revision != app.Revision {
			ops = append(ops, store.Revisions.Delete(api.RevisionKey(h.App, h.Revision), h.Version))
		}
	}
	for len(ops) > 0 {
		n := min(len(ops), 100)
		if _, err := c.Store.Txn(ctx, ops[:n]...); err != nil && !errors.Is(err, store.ErrConflict) {
			return err
		}
		ops = ops[n:]
	}
	return nil
}

func (c *Controller) appendEvent(ctx context.Context, e api.Event) (int64, error) {
	op, err := c.Store.AppendEvent(ctx, e)
	if err != nil {
		return 0, err
	}
	return c.Store.Txn(ctx, op)
}

// instanceProblem says in a few words why an instance is not healthy.
func instanceProblem(inst *api.Instance) string {
	msg := inst.Name + " " + inst.Status.State
	if e := strings.TrimSpace(inst.Status.Error); e != "" {
		msg += ": " + e
	}
	if inst.Status.ExitCode != nil {
		msg += fmt.Sprintf(" (last exit %d)", *inst.Status.ExitCode)
	}
	return msg
}
