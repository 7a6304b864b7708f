package controller

import (
	"context"
	"errors"
	"slices"
	"time"

	"berth/api"
	"berth/internal/store"
)

// retainLoop deletes old ended tasks at start and then hourly.
func (t *Tasks) retainLoop(ctx context.Context) {
	tick := time.NewTicker(retentionPeriod)
	defer tick.Stop()
	for {
		n, err := t.retain(ctx, time.Now().UTC())
		if err != nil && ctx.Err() == nil {
			t.Log.Warn("delete old tasks", "err", err)
		}
		if n > 0 {
			t.Log.Info("deleted old tasks", "count", n, "ended_before", time.Now().UTC().Add(-t.Retention).Format(time.RFC3339))
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// retain deletes the tasks that ended more than Retention before now:
// the record, its payload, its idempotency key while the key still names
// it, and its output. Output goes first, so that a crash in between leaves
// a record to delete again, never files nothing points to.
func (t *Tasks) retain(ctx context.Context, now time.Time) (int, error) {
	all, _, err := store.Tasks.List(ctx, t.Store)
	if err != nil {
		return 0, err
	}
	cutoff := now.Add(-t.Retention)
	var old []api.Task
	for _, task := range all {
		if api.TaskTerminal(task.State) && latest(task.Ended, task.Updated).Before(cutoff) {
			old = append(old, task)
		}
	}
	deleted := 0
	for batch := range slices.Chunk(old, maxTxnOps/3) { // up to 3 ops a task
		groups, err := t.deleteOps(ctx, batch)
		if err != nil {
			return deleted, err
		}
		_, err = t.Store.Txn(ctx, slices.Concat(groups...)...)
		if err == nil {
			deleted += len(groups)
			continue
		}
		if !errors.Is(err, store.ErrConflict) {
			return deleted, err
		}
		for _, ops := range groups { // one changed meanwhile: the others go on their own
			if _, err := t.Store.Txn(ctx, ops...); err == nil {
				deleted++
			} else if !errors.Is(err, store.ErrConflict) {
				return deleted, err
			}
		}
	}
	return deleted, nil
}

// deleteOps removes the tasks' output and returns, per task, the ops that
// delete its records. A task whose output could not be removed is left
// for the next round.
func (t *Tasks) deleteOps(ctx context.Context, batch []api.Task) ([][]store.Op, error) {
	var names []string
	for _, task := range batch {
		if k := task.Spec.IdempotencyKey; k != "" {
			names = append(names, k)
		}
	}
	keys, err := store.TaskKeys.GetMany(ctx, t.Store, names)
	if err != nil {
		return nil, err
	}
	var groups [][]store.Op
	for _, task := range batch {
		if t.Logs != nil {
			if err := t.Logs.Remove(task.ID); err != nil {
				t.Log.Warn("remove task output", "task", task.ID, "err", err)
				continue
			}
		}
		ops := []store.Op{store.Tasks.Delete(task.ID, task.Version), store.Payloads.DeleteAny(task.ID)}
		name := task.Spec.IdempotencyKey
		if k, ok := keys[name]; ok && k.Task == task.ID {
			ops = append(ops, store.TaskKeys.Delete(name, k.Version))
		}
		groups = append(groups, ops)
	}
	return groups, nil
}
