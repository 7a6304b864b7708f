package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"berth/api"
	"berth/internal/store"
	"berth/internal/tasks"
)

// maxReports bounds the reports of one POST /v1/tasks/reports.
const maxReports = 1000

// reportStates are the states a report may carry.
var reportStates = map[string]bool{
	api.TaskRunning: true, api.TaskSucceeded: true, api.TaskFailed: true,
	api.TaskTimedOut: true, api.TaskCancelled: true, api.AttemptLost: true,
}

// postTaskReports applies what an agent reports on the attempts it runs.
// It is on the hot path of every task: all the tasks are read in a few
// round trips and written back in one transaction; only when another
// writer changed one of them meanwhile does it fall back to one
// compare-and-swap per task. No events are written.
func (s *Server) postTaskReports(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	var reports []api.TaskReport
	if err := json.Unmarshal(body, &reports); err != nil {
		writeError(w, http.StatusBadRequest, "", "reports: want a JSON array of task reports: %v", err)
		return
	}
	if len(reports) > maxReports {
		writeError(w, http.StatusBadRequest, "", "%d reports is more than %d in one request", len(reports), maxReports)
		return
	}
	results, rev, err := s.applyReports(r.Context(), reports)
	var forbidden errForbidden
	if errors.As(err, &forbidden) {
		writeError(w, http.StatusForbidden, "", "%v", err)
		return
	}
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	writeCompactJSON(w, http.StatusOK, api.List[api.TaskReportResult]{Items: results, Revision: rev})
}

// beforeReportTxn, set by a test, runs between the reads and the write
// of a batch of reports.
var beforeReportTxn func()

// reportedTask is a task as the reports of one request change it.
type reportedTask struct {
	task    api.Task
	version int64
	changed bool
	reports []int // indexes of its reports, in order
}

func (s *Server) applyReports(ctx context.Context, reports []api.TaskReport) ([]api.TaskReportResult, int64, error) {
	results := make([]api.TaskReportResult, len(reports))
	var ids []string
	byID := map[string]*reportedTask{}
	for i, rep := range reports {
		results[i].ID = rep.ID
		if msg := checkReport(rep); msg != "" {
			results[i].Error = msg
			continue
		}
		rt := byID[rep.ID]
		if rt == nil {
			rt = &reportedTask{}
			byID[rep.ID] = rt
			ids = append(ids, rep.ID)
		}
		rt.reports = append(rt.reports, i)
	}
	current, err := store.Tasks.GetMany(ctx, s.Store, ids)
	if err != nil {
		return nil, 0, err
	}
	if err := s.reportsOnOwnNode(ctx, reports, current); err != nil {
		return nil, 0, err
	}
	now := time.Now().UTC()
	var ops []store.Op
	for _, id := range ids {
		rt := byID[id]
		t, ok := current[id]
		if !ok {
			for _, i := range rt.reports {
				results[i].Error = fmt.Sprintf("task %s not found", id)
			}
			delete(byID, id)
			continue
		}
		rt.task, rt.version = t, t.Version
		rt.changed = applyAll(&rt.task, reports, rt.reports, results, now)
		if rt.changed {
			ops = append(ops, store.Tasks.Put(id, rt.task, rt.version))
		}
	}
	if beforeReportTxn != nil {
		beforeReportTxn()
	}
	rev, err := s.Store.Txn(ctx, ops...)
	if err != nil {
		// A task changed meanwhile, or the records together are more than
		// etcd takes in one request: one by one then.
		return s.applyReportsOneByOne(ctx, reports, ids, byID, results)
	}
	for _, rt := range byID {
		if rt.changed {
			rt.task.Version = rev
		}
		setTask(results, rt)
	}
	return results, rev, nil
}

// applyReportsOneByOne is the slow path: each task read, changed and
// written on its own, again until no one else changed it in between.
func (s *Server) applyReportsOneByOne(ctx context.Context, reports []api.TaskReport, ids []string, byID map[string]*reportedTask, results []api.TaskReportResult) ([]api.TaskReportResult, int64, error) {
	var last int64
	for _, id := range ids {
		rt := byID[id]
		if rt == nil {
			continue
		}
		t, err := store.Tasks.Update(ctx, s.Store, id, func(t *api.Task) error {
			if !applyAll(t, reports, rt.reports, results, time.Now().UTC()) {
				return store.ErrSkip
			}
			return nil
		})
		if errors.Is(err, store.ErrNotFound) {
			for _, i := range rt.reports {
				results[i] = api.TaskReportResult{ID: id, Error: fmt.Sprintf("task %s not found", id)}
			}
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		rt.task = t
		last = max(last, t.Version)
		setTask(results, rt)
	}
	return results, last, nil
}

// applyAll applies a task's reports in order and records each outcome;
// it reports whether any changed the task.
func applyAll(t *api.Task, reports []api.TaskReport, idx []int, results []api.TaskReportResult, now time.Time) bool {
	changed := false
	for _, i := range idx {
		results[i].Applied, results[i].Error = false, ""
		switch err := tasks.Apply(t, reports[i], now); {
		case err == nil:
			results[i].Applied, changed = true, true
		case !errors.Is(err, tasks.ErrStale):
			results[i].Error = err.Error()
		}
	}
	return changed
}

func setTask(results []api.TaskReportResult, rt *reportedTask) {
	for _, i := range rt.reports {
		if results[i].Error == "" {
			t := rt.task
			results[i].Task = &t
		}
	}
}

// checkReport says what is wrong with a report, if anything, before any
// task is read for it.
func checkReport(r api.TaskReport) string {
	switch {
	case !api.ValidTaskID(r.ID):
		return fmt.Sprintf("id: %q is not a task id", r.ID)
	case r.Attempt < 1:
		return fmt.Sprintf("attempt: %d is not an attempt number", r.Attempt)
	case !reportStates[r.State]:
		return fmt.Sprintf("state: %q is not running, succeeded, failed, timed_out, cancelled or lost", r.State)
	}
	return ""
}
