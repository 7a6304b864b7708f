package apiserver

import (
	"context"
	"testing"
	"time"

	"berth/api"
	"berth/internal/store"
	"berth/internal/tasks"
)

// BenchmarkTaskPath: submit in batches, then report each task's end in
// batches, as agents do; assignment is written straight to the store.
// One op is one task.
func BenchmarkTaskPath(b *testing.B) {
	e := newTaskServer(b)
	ctx := context.Background()
	const batch = 500
	var submit, report time.Duration
	b.ResetTimer()
	for done := 0; done < b.N; done += batch {
		n := min(batch, b.N-done)
		specs := make([]api.TaskSpec, n)
		for i := range specs {
			specs[i] = api.TaskSpec{Image: "berth/busybox:1", Command: []string{"true"}}
		}
		start := time.Now()
		l, err := e.cl.SubmitTasks(ctx, specs)
		if err != nil {
			b.Fatal(err)
		}
		submit += time.Since(start)
		b.StopTimer() // the controller's part
		ops := make([]store.Op, 0, n)
		for _, task := range l.Items {
			tasks.Assign(&task, "c", "n1", time.Now())
			ops = append(ops, store.Tasks.Put(task.ID, task, task.Version))
		}
		if _, err := e.st.Txn(ctx, ops...); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		zero := 0
		reports := make([]api.TaskReport, 0, n)
		for _, task := range l.Items {
			reports = append(reports, api.TaskReport{ID: task.ID, Attempt: 1, State: api.TaskSucceeded, ExitCode: &zero})
		}
		start = time.Now()
		res, err := e.cl.ReportTasks(ctx, reports)
		if err != nil || !res[0].Applied {
			b.Fatal(err, res[0])
		}
		report += time.Since(start)
	}
	b.ReportMetric(float64(submit.Nanoseconds())/float64(b.N), "submit-ns/task")
	b.ReportMetric(float64(report.Nanoseconds())/float64(b.N), "report-ns/task")
}
