package controller

import (
	"context"
	"errors"
	"time"

	"berth/api"
	"berth/internal/store"
	"berth/internal/tasks"
)

// cronSchedule is a parsed cron expression.
type cronSchedule interface{ Next(time.Time) time.Time }

type parsedCron struct {
	schedule cronSchedule
	err      error
}

// fireSchedules makes a task of each schedule that is due, and returns
// when the next one is due (zero: none is).
func (t *Tasks) fireSchedules(ctx context.Context, now time.Time) (time.Time, error) {
	var next time.Time
	var errs []error
	list := make([]api.Schedule, 0, len(t.schedules.items))
	for _, s := range t.schedules.items {
		list = append(list, *s)
	}
	for _, s := range list {
		c := t.cron(s.Name, s.Cron)
		if c == nil {
			continue
		}
		from := s.LastRun
		if from.IsZero() {
			from = s.Created
		}
		due := c.Next(from)
		if due.IsZero() {
			continue // never fires
		}
		if now.Before(due) {
			next = earliest(next, due)
			continue
		}
		fired, err := t.fire(ctx, s, now)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if fired {
			next = earliest(next, c.Next(now))
		}
	}
	return next, errors.Join(errs...)
}

// fire runs a due schedule: a new task, or none when the last run is still
// active and runs may not overlap; either way LastRun moves to now. The
// task, its payload and the schedule are written in one transaction with
// compare-and-swap on the schedule, so that a run fires once even across
// a crash or a concurrent edit. fired is false when the schedule changed
// meanwhile: it is judged again once its new version is seen.
func (t *Tasks) fire(ctx context.Context, s api.Schedule, now time.Time) (fired bool, err error) {
	version := s.Version
	s.LastRun = now
	var ops []store.Op
	var task api.Task
	if s.Overlap != api.OverlapAllow && t.index.bySchedule[s.Name] > 0 {
		t.Log.Info("schedule skipped a run: its last run is still active", "schedule", s.Name, "last_task", s.LastTask)
	} else {
		spec := s.Task
		spec.Default()
		task = tasks.New(api.NewTaskID(now), spec, now)
		task.Schedule, s.LastTask = s.Name, task.ID
		ops = append(ops, store.Tasks.Create(task.ID, task))
		if len(spec.Payload) > 0 {
			ops = append(ops, store.Payloads.Create(task.ID, api.TaskPayload{Data: spec.Payload}))
		}
	}
	ops = append(ops, store.Schedules.Put(s.Name, s, version))
	rev, err := t.Store.Txn(ctx, ops...)
	if errors.Is(err, store.ErrConflict) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	t.schedules.wrote(s.Name, s, rev)
	if task.ID != "" {
		t.tasks.wrote(task.ID, task, rev)
		t.Log.Info("schedule fired", "schedule", s.Name, "task", task.ID)
	}
	return true, nil
}

// cron parses a schedule's expression once; a bad one (the API rejects
// them, so only an old record) is reported once and never fires.
func (t *Tasks) cron(name, expr string) cronSchedule {
	p, ok := t.crons[expr]
	if !ok {
		c, err := api.CronParser.Parse(expr)
		p = parsedCron{c, err}
		t.crons[expr] = p
		if err != nil {
			t.Log.Warn("schedule has a bad cron expression; it never fires", "schedule", name, "cron", expr, "err", err)
		}
	}
	return p.schedule
}
