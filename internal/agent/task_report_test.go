package agent

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"berth/api"
	"berth/internal/client"
)

// reportAPI records report batches; each call waits for release.
type reportAPI struct {
	taskAPI
	mu      sync.Mutex
	batches [][]api.TaskReport
	called  chan struct{}
	release chan struct{}
}

func (f *reportAPI) ReportTasks(ctx context.Context, reports []api.TaskReport) ([]api.TaskReportResult, error) {
	f.mu.Lock()
	f.batches = append(f.batches, reports)
	f.mu.Unlock()
	f.called <- struct{}{}
	<-f.release
	out := make([]api.TaskReportResult, len(reports))
	for i, r := range reports {
		out[i] = api.TaskReportResult{ID: r.ID, Applied: true}
	}
	return out, nil
}

func newReportAPI() *reportAPI {
	return &reportAPI{called: make(chan struct{}, 10), release: make(chan struct{}, 10)}
}

func (f *reportAPI) batch(t *testing.T, i int) []api.TaskReport {
	t.Helper()
	select {
	case <-f.called:
	case <-time.After(10 * time.Second):
		t.Fatalf("no request %d", i)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.batches[i]
}

func TestReporterFoldsRunningIntoEnd(t *testing.T) {
	f := newReportAPI()
	p := newReporter(f, slog.New(slog.NewTextHandler(io.Discard, nil)))
	started := time.Now()
	p.post(api.TaskReport{ID: "a", Attempt: 1, State: api.TaskRunning, ContainerID: "c1", Started: started})
	answer := make(chan api.TaskReportResult, 1)
	go func() {
		res, _ := p.send(t.Context(), api.TaskReport{ID: "a", Attempt: 1, State: api.TaskSucceeded})
		answer <- res
	}()
	for len(p.queueSnapshot()) < 2 {
		time.Sleep(time.Millisecond)
	}
	go p.run(t.Context())
	f.release <- struct{}{}
	got := f.batch(t, 0)
	if len(got) != 1 || got[0].State != api.TaskSucceeded || got[0].ContainerID != "c1" || !got[0].Started.Equal(started) {
		t.Fatalf("batch = %+v, want the end alone with the running report's container and start", got)
	}
	if res := <-answer; !res.Applied {
		t.Fatalf("answer = %+v", res)
	}
}

func TestReporterKeepsOneReportOfAnAttemptInFlight(t *testing.T) {
	f := newReportAPI()
	p := newReporter(f, slog.New(slog.NewTextHandler(io.Discard, nil)))
	go p.run(t.Context())
	p.post(api.TaskReport{ID: "a", Attempt: 1, State: api.TaskRunning})
	if got := f.batch(t, 0); len(got) != 1 || got[0].ID != "a" {
		t.Fatalf("first batch = %+v", got)
	}
	// a's end must wait for a's running report; b goes at once.
	go p.send(t.Context(), api.TaskReport{ID: "a", Attempt: 1, State: api.TaskFailed})
	for len(p.queueSnapshot()) < 1 {
		time.Sleep(time.Millisecond)
	}
	p.post(api.TaskReport{ID: "b", Attempt: 1, State: api.TaskRunning})
	if got := f.batch(t, 1); len(got) != 1 || got[0].ID != "b" {
		t.Fatalf("second batch = %+v, want b alone", got)
	}
	f.release <- struct{}{}
	f.release <- struct{}{}
	if got := f.batch(t, 2); len(got) != 1 || got[0].ID != "a" || got[0].State != api.TaskFailed {
		t.Fatalf("third batch = %+v, want a's end", got)
	}
	f.release <- struct{}{}
}

func TestReporterRetriesOnServerErrors(t *testing.T) {
	calls := 0
	f := &flakyReportAPI{fail: 2, calls: &calls}
	p := newReporter(f, slog.New(slog.NewTextHandler(io.Discard, nil)))
	go p.run(t.Context())
	res, err := p.send(t.Context(), api.TaskReport{ID: "a", Attempt: 1, State: api.TaskSucceeded})
	if err != nil || !res.Applied || calls != 3 {
		t.Fatalf("send = %+v, %v after %d calls", res, err, calls)
	}
}

type flakyReportAPI struct {
	taskAPI
	fail  int
	calls *int
}

func (f *flakyReportAPI) ReportTasks(ctx context.Context, reports []api.TaskReport) ([]api.TaskReportResult, error) {
	*f.calls++
	if *f.calls <= f.fail {
		return nil, &client.Error{Status: 503, Message: "store unavailable"}
	}
	return []api.TaskReportResult{{ID: reports[0].ID, Applied: true}}, nil
}

func (p *reporter) queueSnapshot() []*pendingReport {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*pendingReport(nil), p.queue...)
}
