package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

const (
	listEvery  = 100 * time.Millisecond // the engine's list of running containers
	probeEvery = 50 * time.Millisecond  // GET / on each container that has not answered yet
)

// probeClient makes a fresh connection for every GET, like curl.
var probeClient = &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func get200(ctx context.Context, addr string) bool {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
	if err != nil {
		return false
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == 200
}

// answers is when each container first answered 200 from outside.
type answers map[string]time.Time

// sorted is the answer times, earliest first.
func (a answers) sorted() []time.Time {
	ts := make([]time.Time, 0, len(a))
	for _, t := range a {
		ts = append(ts, t)
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	return ts
}

func (a answers) last() time.Time {
	ts := a.sorted()
	if len(ts) == 0 {
		return time.Time{}
	}
	return ts[len(ts)-1]
}

// waitAnswering is the probe from outside, the same for berth, Swarm and
// the floor: it lists the engine's running containers that carry every
// label (every listEvery) and GETs / on the published port of each one
// (every probeEvery, one request in flight per container) until it
// answers 200; it returns once n distinct containers have. abort, when it
// yields an error (the command under test failed), ends the wait.
func waitAnswering(ctx context.Context, e *engine, n int, timeout time.Duration, abort <-chan error, labels ...string) (answers, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	type answer struct {
		id string
		at time.Time
	}
	got := make(chan answer, 64)
	probing := map[string]bool{}
	out := answers{}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	var listErrs atomic.Int64
	tick := time.NewTicker(listEvery)
	defer tick.Stop()
	for {
		cs, err := e.list(ctx, labels...)
		if err != nil {
			listErrs.Add(1)
		}
		for _, c := range cs {
			addr := c.addr()
			if addr == "" || probing[c.ID] {
				continue
			}
			probing[c.ID] = true
			wg.Add(1)
			go func(id, addr string) {
				defer wg.Done()
				for ctx.Err() == nil {
					if get200(ctx, addr) {
						select {
						case got <- answer{id, time.Now()}:
						case <-ctx.Done():
						}
						return
					}
					select {
					case <-ctx.Done():
					case <-time.After(probeEvery):
					}
				}
			}(c.ID, addr)
		}
	wait:
		for {
			select {
			case a := <-got:
				out[a.id] = a.at
				if len(out) >= n {
					return out, nil
				}
			case err := <-abort:
				if err != nil {
					return out, err
				}
				abort = nil // the command ended well: keep waiting
			case <-ctx.Done():
				return out, fmt.Errorf("%d of %d containers (%v) answered within %s (%d list errors): %w", len(out), n, labels, timeout, listErrs.Load(), ctx.Err())
			case <-tick.C:
				break wait
			}
		}
	}
}

// waitSettled waits until exactly n containers with labels run, all of
// them carrying the label want too (stopped ones are not counted).
func waitSettled(ctx context.Context, e *engine, n int, timeout time.Duration, want string, labels ...string) error {
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		all, err1 := e.list(ctx, labels...)
		good, err2 := e.list(ctx, append(labels, want)...)
		if err1 == nil && err2 == nil {
			if len(all) == n && len(good) == n {
				return nil
			}
			last = fmt.Sprintf("%d running, %d of them %s", len(all), len(good), want)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not settled at %d running %s within %s: %s", n, want, timeout, last)
		}
		if err := sleep(ctx, listEvery); err != nil {
			return err
		}
	}
}

// waitGone waits until no container (running or not) carries the labels.
func waitGone(ctx context.Context, e *engine, timeout time.Duration, labels ...string) error {
	deadline := time.Now().Add(timeout)
	for {
		n, err := e.countAll(ctx, labels...)
		if err == nil && n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d containers %v still there after %s", n, labels, timeout)
		}
		if err := sleep(ctx, listEvery); err != nil {
			return err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
