package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"berth/api"
	"berth/internal/client"
)

// rollout is the state of an app's instances against its spec.
type rollout struct {
	want, current, healthy, old, stopping int
	failed                                string // why the rollout cannot finish, if it cannot
	problem                               string // what holds back an instance of the new revision, if anything does
}

func (r rollout) String() string {
	return fmt.Sprintf("%d/%d healthy at the new revision, %d old, %d stopping", r.healthy, r.want, r.old, r.stopping)
}

func (r rollout) done() bool {
	return r.current == r.want && r.healthy == r.want && r.old == 0 && r.stopping == 0
}

// assess compares an app with its instances.
func assess(app api.App, insts []api.Instance) rollout {
	r := rollout{want: app.Spec.ReplicaCount()}
	for _, inst := range insts {
		switch {
		case inst.Desired == api.DesiredKeep:
			continue // stopped and kept for a fast rollback: not part of the rollout
		case inst.Desired == api.DesiredStop:
			r.stopping++
		case inst.Revision != app.TemplateRevision:
			r.old++
		default:
			r.current++
			if inst.Ready() {
				r.healthy++
			} else if p := problem(inst); p != "" && r.problem == "" {
				r.problem = p
			}
			if r.failed != "" {
				continue
			}
			switch {
			case inst.Status.State == api.StateFailed:
				r.failed = fmt.Sprintf("%s failed: %s", inst.Name, inst.Status.Error)
			case inst.Status.Restarts >= 3 && !inst.Status.Healthy:
				r.failed = fmt.Sprintf("%s keeps exiting (%d restarts, last exit code %s): %s", inst.Name, inst.Status.Restarts, exitCodeString(inst.Status.ExitCode), inst.Status.Error)
			case inst.Node == "" && inst.Reason != "" && inst.NotBefore.IsZero():
				// (One with a NotBefore waits for its replacement backoff.)
				r.failed = fmt.Sprintf("%s cannot be placed: %s", inst.Name, inst.Reason)
			}
		}
	}
	return r
}

// problem is the last error of an instance that is not ready (a failed
// health check, an exit), with how many in a row before it in its place
// were replaced without ever becoming healthy.
func problem(inst api.Instance) string {
	if inst.Status.Error == "" {
		return ""
	}
	p := fmt.Sprintf("%s is %s: %s", inst.Name, inst.Status.State, inst.Status.Error)
	if inst.Attempt > 1 {
		p += fmt.Sprintf(" (attempt %d: the %d instances before it never became healthy either)", inst.Attempt, inst.Attempt-1)
	}
	return p
}

// progress remembers the best a rollout has been, to tell when it last
// got closer to done: more healthy at the new revision, fewer old or
// stopping ones, the number of instances nearer the replicas. A sick
// instance replaced again and again does none of these.
type progress struct {
	want, healthy, old, stopping, gap int
	at                                time.Time // of the last progress
}

// note records r, seen at now.
func (p *progress) note(r rollout, now time.Time) {
	gap := abs(r.current - r.want)
	if p.at.IsZero() || r.want != p.want {
		*p = progress{want: r.want, healthy: r.healthy, old: r.old, stopping: r.stopping, gap: gap, at: now}
		return
	}
	if r.healthy > p.healthy || r.old < p.old || r.stopping < p.stopping || gap < p.gap {
		p.at = now
	}
	p.healthy, p.old, p.stopping, p.gap = max(p.healthy, r.healthy), min(p.old, r.old), min(p.stopping, r.stopping), min(p.gap, gap)
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// defaultProgressDeadline is how long a deploy or scale follows a rollout
// that makes no progress before it gives up with an error: the rollout
// cannot finish on its own, and berth would go on replacing instances
// that never get healthy.
const defaultProgressDeadline = 2 * time.Minute

// progressDeadline is the default, or, when the app's health check gives
// an instance longer before it is replaced (start_period, then twice
// retries failed checks), twice that; and at least the server's own
// update.progress_deadline and a little, so that the server's verdict (a
// revert) is seen rather than guessed.
func progressDeadline(spec api.AppSpec) time.Duration {
	d := max(defaultProgressDeadline, time.Duration(*spec.UpdateOf().ProgressDeadline)+15*time.Second)
	if h := spec.Health; h != nil && h.StartPeriod != nil && h.Interval != nil {
		d = max(d, 2*(h.StartPeriod.D()+time.Duration(2*h.Retries)*h.Interval.D()))
	}
	return d
}

// follow prints the app's events until its instances match the spec
// (or it is gone, when gone is set), or the rollout fails, makes no
// progress for deadline (0: see progressDeadline), or times out.
func follow(ctx context.Context, cl *client.Client, out io.Writer, name string, since int64, gone bool, timeout, deadline time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	events, _ := cl.WatchEvents(ctx, name, since)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	lastLine, lastProblem := "", ""
	var prog progress
	var first int64 // the revision followed
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				events = nil // the watch ended; keep polling
				continue
			}
			if ev.Type == "put" {
				printEvent(out, ev.Object, start)
			}
			for len(events) > 0 { // print the burst before looking at state
				if ev := <-events; ev.Type == "put" {
					printEvent(out, ev.Object, start)
				}
			}
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("%s did not converge within %s (%s); it goes on in the background: see 'berth ps %s'", name, timeout, lastLine, name)
		}
		insts, err := cl.ListInstances(ctx, client.InstanceFilter{App: name})
		if err != nil {
			continue
		}
		if gone {
			if len(insts.Items) == 0 {
				if _, err := cl.GetApp(ctx, name); client.IsStatus(err, 404) {
					fmt.Fprintf(out, "%s removed in %s\n", name, time.Since(start).Round(10*time.Millisecond))
					return nil
				}
			}
			lastLine = fmt.Sprintf("%d instances left", len(insts.Items))
			continue
		}
		app, err := cl.GetApp(ctx, name)
		if err != nil {
			return err
		}
		if app.Idled {
			// Scaled to zero before the rollout was seen to finish: the
			// next request through the gateway wakes it.
			fmt.Fprintf(out, "%s: idle (scaled to zero, woken by its next request) after %s\n", name, time.Since(start).Round(10*time.Millisecond))
			return nil
		}
		if first == 0 {
			first = app.Revision
		}
		if err := verdict(ctx, cl, name, first, app); err != nil {
			return err
		}
		r := assess(app, insts.Items)
		lastLine = r.String()
		if r.problem != "" {
			lastProblem = r.problem
		}
		if r.done() {
			fmt.Fprintf(out, "%s: %d/%d healthy at revision %d in %s\n", name, r.healthy, r.want, app.Revision, time.Since(start).Round(10*time.Millisecond))
			return nil
		}
		if r.failed != "" {
			return fmt.Errorf("rollout of %s failed: %s", name, r.failed)
		}
		now := time.Now()
		prog.note(r, now)
		limit := deadline
		if limit == 0 {
			limit = progressDeadline(app.Spec)
		}
		if now.Sub(prog.at) >= limit {
			return stalled(name, limit, r, lastProblem)
		}
	}
}

// verdict is the error of a revision the server failed or reverted (its
// update.progress_deadline passed), nil while it has not.
func verdict(ctx context.Context, cl *client.Client, name string, rev int64, app api.App) error {
	rec, err := cl.GetRevision(ctx, name, rev)
	if err != nil {
		return nil // an older server, or the record is not there yet: the instances tell
	}
	switch rec.Outcome {
	case api.OutcomeReverted:
		return fmt.Errorf("rollout of %s failed: revision %d reverted to the last good one (now revision %d, %s) and marked bad: %s",
			name, rev, app.Revision, app.Spec.Image, rec.Reason)
	case api.OutcomeFailed:
		return fmt.Errorf("rollout of %s failed: revision %d: %s; berth keeps trying: see 'berth ps %s' and 'berth history %s'", name, rev, rec.Reason, name, name)
	}
	return nil
}

// stalled is the error of a rollout without progress for its deadline.
func stalled(name string, limit time.Duration, r rollout, problem string) error {
	why := ""
	if problem != "" {
		why = ": " + problem
	}
	return fmt.Errorf("rollout of %s failed: no progress for %s (%s)%s; berth keeps trying, replacing what does not get healthy with a backoff: see 'berth ps %s' and 'berth logs %s'",
		name, limit, r, why, name, name)
}

func printEvent(out io.Writer, e api.Event, start time.Time) {
	who := e.Instance
	if who == "" {
		who = e.App
	}
	fmt.Fprintf(out, "%7s  %-14s %-12s %s\n", "+"+time.Since(start).Round(100*time.Millisecond).String(), who, e.Kind, e.Message)
}

func exitCodeString(c *int) string {
	if c == nil {
		return "-"
	}
	return fmt.Sprint(*c)
}
