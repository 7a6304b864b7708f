package agent

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"berth/api"
)

const (
	// maxReportBatch bounds the reports of one request (the server writes
	// them in one transaction).
	maxReportBatch = 500
	// reportSenders bounds the requests in flight: the server's latency,
	// not its work, is what limits one sender.
	reportSenders = 4
)

// reporter sends attempt reports in batches: a sender with nothing in
// flight sends at once whatever is queued, so that reports go out at once
// when the server keeps up and in bulk when it does not. Reports of one
// attempt are never in flight together, so they apply in order.
type reporter struct {
	api      taskAPI
	log      *slog.Logger
	onResult func(api.TaskReportResult) // each answer that carries the task

	mu       sync.Mutex
	queue    []*pendingReport
	running  map[string]*pendingReport // queued running reports, by attempt
	inFlight map[string]bool           // attempts with a report in flight
	wake     chan struct{}             // cap 1: the queue grew, or a request ended
}

type pendingReport struct {
	key    string // task id and attempt
	rep    api.TaskReport
	answer chan api.TaskReportResult // cap 1; nil: nobody waits
	merged bool                      // folded into a later report of its attempt
}

func newReporter(api taskAPI, log *slog.Logger) *reporter {
	return &reporter{api: api, log: log, running: map[string]*pendingReport{}, inFlight: map[string]bool{},
		wake: make(chan struct{}, 1)}
}

// post queues a report nobody waits for.
func (p *reporter) post(rep api.TaskReport) { p.enqueue(&pendingReport{rep: rep}) }

// send queues a report and waits for the server's answer to it. An answer
// with Applied false is about an attempt that is no longer current: there
// is nothing more to do about it.
func (p *reporter) send(ctx context.Context, rep api.TaskReport) (api.TaskReportResult, error) {
	pr := &pendingReport{rep: rep, answer: make(chan api.TaskReportResult, 1)}
	p.enqueue(pr)
	select {
	case res := <-pr.answer:
		return res, nil
	case <-ctx.Done():
		return api.TaskReportResult{}, ctx.Err()
	}
}

func (p *reporter) enqueue(pr *pendingReport) {
	pr.key = pr.rep.ID + "." + strconv.Itoa(pr.rep.Attempt)
	p.mu.Lock()
	if pr.rep.State == api.TaskRunning {
		p.running[pr.key] = pr
	} else if old := p.running[pr.key]; old != nil {
		// A short attempt: its end says all its running report would have.
		old.merged = true
		delete(p.running, pr.key)
		if pr.rep.ContainerID == "" {
			pr.rep.ContainerID = old.rep.ContainerID
		}
		if pr.rep.Started.IsZero() {
			pr.rep.Started = old.rep.Started
		}
	}
	p.queue = append(p.queue, pr)
	p.mu.Unlock()
	p.signal()
}

func (p *reporter) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// take removes the next batch from the queue, leaving the reports of
// attempts that have one in flight.
func (p *reporter) take() []*pendingReport {
	p.mu.Lock()
	defer p.mu.Unlock()
	var batch []*pendingReport
	rest := p.queue[:0]
	for _, pr := range p.queue {
		switch {
		case pr.merged:
		case len(batch) == maxReportBatch || p.inFlight[pr.key]:
			rest = append(rest, pr)
		default:
			if pr.rep.State == api.TaskRunning {
				delete(p.running, pr.key)
			}
			batch = append(batch, pr)
		}
	}
	for _, pr := range batch {
		p.inFlight[pr.key] = true
	}
	clear(p.queue[len(rest):])
	p.queue = rest
	if len(p.queue) > 0 && len(batch) > 0 {
		p.signal() // more for another sender
	}
	return batch
}

// done ends a batch's flight; failed, it goes back to the queue's front.
func (p *reporter) done(batch []*pendingReport, failed bool) {
	p.mu.Lock()
	for _, pr := range batch {
		delete(p.inFlight, pr.key)
	}
	if failed {
		p.queue = append(batch, p.queue...)
		for _, pr := range batch {
			if pr.rep.State == api.TaskRunning && p.running[pr.key] == nil {
				p.running[pr.key] = pr
			}
		}
	}
	p.mu.Unlock()
	p.signal()
}

func (p *reporter) run(ctx context.Context) {
	var wg sync.WaitGroup
	for range reportSenders {
		wg.Go(func() { p.sender(ctx) })
	}
	wg.Wait()
}

func (p *reporter) sender(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for {
		batch := p.take()
		if len(batch) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-p.wake:
			}
			continue
		}
		reports := make([]api.TaskReport, len(batch))
		for i, pr := range batch {
			reports[i] = pr.rep
		}
		results, err := p.api.ReportTasks(ctx, reports)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil && !isClientError(err):
			p.log.Warn("report tasks", "reports", len(batch), "err", err, "retry_in", backoff)
			p.done(batch, true)
			sleep(ctx, backoff)
			backoff = min(backoff*2, 5*time.Second)
			continue
		case err != nil:
			p.log.Warn("reports refused", "reports", len(batch), "err", err)
		}
		backoff = 100 * time.Millisecond
		for i, pr := range batch {
			res := api.TaskReportResult{ID: pr.rep.ID, Error: "no answer"}
			if err == nil && i < len(results) {
				res = results[i]
			}
			if res.Error != "" {
				p.log.Warn("task report refused", "task", pr.rep.ID, "attempt", pr.rep.Attempt, "state", pr.rep.State, "err", res.Error)
			}
			if res.Task != nil && p.onResult != nil {
				p.onResult(res)
			}
			if pr.answer != nil {
				pr.answer <- res
			}
		}
		p.done(batch, false)
	}
}
