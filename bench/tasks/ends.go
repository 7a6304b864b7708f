package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"berth/api"
	"berth/internal/store"
)

// ends follows the tasks in the store, as any watcher would, and notes
// when each reached a terminal state, with the times its record holds.
type ends struct {
	mu      sync.Mutex
	ended   map[string]ending
	last    time.Time
	changed chan struct{}
	errc    <-chan error
}

// ending is what the bench keeps of an ended task.
type ending struct {
	state                                      string
	attempts                                   int
	created, assigned, started, exited, recEnd time.Time // from the record (server clock)
	seen                                       time.Time // by this watch
}

// endView is the part of a task record the bench reads: decoding only
// this keeps the bench's own watch cheap beside the system it measures.
type endView struct {
	State    string    `json:"state"`
	Created  time.Time `json:"created"`
	Ended    time.Time `json:"ended"`
	Attempts []struct {
		Created time.Time `json:"created"`
		Started time.Time `json:"started"`
		Ended   time.Time `json:"ended"`
	} `json:"attempts"`
}

func watchEnds(ctx context.Context, st *store.Store) (*ends, error) {
	_, rev, err := store.Tasks.List(ctx, st)
	if err != nil {
		return nil, err
	}
	events, errc := store.Tasks.WatchRaw(ctx, st, rev)
	e := &ends{ended: map[string]ending{}, changed: make(chan struct{}, 1), errc: errc}
	go func() {
		for ev := range events {
			var t endView
			if ev.Deleted || json.Unmarshal(ev.Value, &t) != nil || !api.TaskTerminal(t.State) {
				continue
			}
			now := time.Now()
			e.mu.Lock()
			if _, seen := e.ended[ev.Name]; !seen {
				en := ending{state: t.State, attempts: len(t.Attempts), created: t.Created, recEnd: t.Ended, seen: now}
				if n := len(t.Attempts); n > 0 {
					a := t.Attempts[n-1]
					en.assigned, en.started, en.exited = a.Created, a.Started, a.Ended
				}
				e.ended[ev.Name] = en
				e.last = now
			}
			e.mu.Unlock()
			select {
			case e.changed <- struct{}{}:
			default:
			}
		}
	}()
	return e, nil
}

// wait returns the time the n-th task ended.
func (e *ends) wait(ctx context.Context, n int, timeout time.Duration, stopped <-chan error) (time.Time, error) {
	deadline := time.After(timeout)
	for {
		e.mu.Lock()
		got, last := len(e.ended), e.last
		e.mu.Unlock()
		if got >= n {
			return last, nil
		}
		select {
		case <-e.changed:
		case err := <-e.errc:
			return last, fmt.Errorf("task watch: %w", err)
		case err := <-stopped:
			return last, fmt.Errorf("a component stopped: %v", err)
		case <-deadline:
			return last, fmt.Errorf("%d of %d tasks ended within %s", got, n, timeout)
		case <-ctx.Done():
			return last, ctx.Err()
		}
	}
}

func (e *ends) summary() (map[string]int, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	states, attempts := map[string]int{}, 0
	for _, en := range e.ended {
		states[en.state]++
		attempts += en.attempts
	}
	return states, attempts
}

// timeline says when each quarter of the tasks had ended, and where a
// task's time went, from its record.
func (e *ends) timeline(t0 time.Time) (quarters [4]time.Duration, stages []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var seen []time.Time
	var queued, starting, running, reporting, watching []time.Duration
	for _, en := range e.ended {
		seen = append(seen, en.seen)
		if en.assigned.IsZero() || en.started.IsZero() || en.exited.IsZero() {
			continue
		}
		queued = append(queued, en.assigned.Sub(en.created))
		starting = append(starting, en.started.Sub(en.assigned))
		running = append(running, en.exited.Sub(en.started))
		reporting = append(reporting, en.recEnd.Sub(en.exited))
		watching = append(watching, en.seen.Sub(en.recEnd))
	}
	sortTimes(seen)
	for q := range quarters {
		if i := len(seen)*(q+1)/4 - 1; i >= 0 {
			quarters[q] = seen[i].Sub(t0)
		}
	}
	stages = []string{
		"submitted -> attempt assigned " + stats(queued),
		"assigned -> container started " + stats(starting),
		"started -> exited " + stats(running),
		"exited -> task ended in the store " + stats(reporting),
		"ended in the store -> seen by the bench's watch " + stats(watching),
	}
	return quarters, stages
}
