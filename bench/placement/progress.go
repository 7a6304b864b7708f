package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	json "github.com/goccy/go-json"

	"berth/api"
	"berth/internal/store"
)

// progress follows the instances in the store, as any watcher would, and
// notes when each was first seen created, placed (its node written) and
// acknowledged (reported running by its simulated node).
type progress struct {
	n       int // instances expected
	mu      sync.Mutex
	seen    map[string]uint8
	count   [3]int          // created, placed, acknowledged
	at      [3][4]time.Time // when each count reached 25, 50, 75 and 100% of n
	changed chan struct{}
	errc    <-chan error
}

const (
	created = iota
	placed
	acked
)

// instanceView is the part of an instance record the bench reads:
// decoding only this keeps its own watch cheap beside what it measures.
type instanceView struct {
	Node   string `json:"node"`
	Status struct {
		State string `json:"state"`
	} `json:"status"`
}

func watchProgress(ctx context.Context, st *store.Store, n int) (*progress, error) {
	_, rev, err := store.Instances.List(ctx, st)
	if err != nil {
		return nil, err
	}
	events, errc := store.Instances.WatchRaw(ctx, st, rev)
	p := &progress{n: n, seen: make(map[string]uint8, n), changed: make(chan struct{}, 1), errc: errc}
	go func() {
		for ev := range events {
			var v instanceView
			if ev.Deleted || json.Unmarshal(ev.Value, &v) != nil {
				continue
			}
			p.note(ev.Name, v, time.Now())
		}
	}()
	return p, nil
}

func (p *progress) note(name string, v instanceView, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	had := p.seen[name]
	bits := had | 1<<created
	if v.Node != "" {
		bits |= 1 << placed
	}
	if v.Status.State == api.StateRunning {
		bits |= 1 << acked
	}
	if bits == had {
		return
	}
	p.seen[name] = bits
	for stage := range p.count {
		if bits&(1<<stage) != 0 && had&(1<<stage) == 0 {
			p.count[stage]++
			for q := range 4 {
				if p.count[stage] == (q+1)*p.n/4 {
					p.at[stage][q] = now
				}
			}
		}
	}
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

func (p *progress) counts() [3]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.count
}

// wait returns when all n instances reached stage, with the time the last
// did; tick is called now and then with the counts so far.
func (p *progress) wait(ctx context.Context, stage int, timeout time.Duration, stopped <-chan error, tick func([3]int)) (time.Time, error) {
	deadline := time.After(timeout)
	report := time.NewTicker(5 * time.Second)
	defer report.Stop()
	for {
		p.mu.Lock()
		got, last := p.count[stage], p.at[stage][3]
		p.mu.Unlock()
		if got >= p.n {
			return last, nil
		}
		select {
		case <-p.changed:
		case <-report.C:
			tick(p.counts())
		case err := <-p.errc:
			return last, fmt.Errorf("instance watch: %w", err)
		case err := <-stopped:
			return last, fmt.Errorf("a server component stopped: %v", err)
		case <-deadline:
			return last, fmt.Errorf("%d of %d instances %s within %s", got, p.n, stageNames[stage], timeout)
		case <-ctx.Done():
			return last, ctx.Err()
		}
	}
}

var stageNames = [3]string{"created", "placed", "acknowledged"}
