package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"berth/api"
)

// While an instance has never been healthy within its start period, it is
// probed often, so that a fast starter (or a woken idle app) is ready at
// once: every 20ms for its first two seconds, then every 100ms.
const (
	startupProbeFast  = 20 * time.Millisecond
	startupProbeSlow  = 100 * time.Millisecond
	startupFastPeriod = 2 * time.Second
)

func (l *local) probing(containerID string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.probeCancel != nil && l.probeFor == containerID
}

func (l *local) stopProbe() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.probeCancel != nil {
		l.probeCancel()
		l.probeCancel, l.probeFor = nil, ""
	}
}

// startProbe runs the instance's health check against one container until
// the container changes. healthy is the state to start from (true when a
// healthy container is adopted, so that it does not flap).
func (a *Agent) startProbe(ctx context.Context, inst api.Instance, l *local, containerID, address string, healthy bool) {
	l.stopProbe()
	pctx, cancel := context.WithCancel(ctx)
	l.mu.Lock()
	l.probeCancel, l.probeFor = cancel, containerID
	l.mu.Unlock()
	go a.probeLoop(pctx, inst, l, containerID, address, healthy)
}

func (a *Agent) probeLoop(ctx context.Context, inst api.Instance, l *local, containerID, address string, healthy bool) {
	h := inst.Spec.Health
	// report applies a change of health unless the prober was stopped meanwhile.
	report := func(change func(*api.Status)) {
		l.mu.Lock()
		defer l.mu.Unlock()
		if ctx.Err() != nil || l.probeFor != containerID {
			return
		}
		st := l.status
		change(&st)
		if err := a.reportLocked(ctx, inst.Name, l, st); err != nil && ctx.Err() == nil {
			a.Log.Warn("report health", "instance", inst.Name, "err", err)
		}
	}
	if h == nil { // nothing to check: running is healthy
		report(func(st *api.Status) { st.State, st.Healthy, st.Error = api.StateRunning, true, "" })
		return
	}
	started := time.Now()
	startDeadline := started.Add(h.StartPeriod.D())
	everHealthy := healthy
	failures := 0
	wait := time.Duration(0)
	if healthy {
		wait = h.Interval.D()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		err := a.probe(ctx, h, containerID, address)
		inStartPeriod := !everHealthy && time.Now().Before(startDeadline)
		wait = h.Interval.D()
		if inStartPeriod {
			step := startupProbeSlow
			if time.Since(started) < startupFastPeriod {
				step = startupProbeFast
			}
			wait = min(step, wait)
		}
		if err == nil {
			failures = 0
			everHealthy = true
			if !healthy {
				healthy = true
				report(func(st *api.Status) {
					st.State, st.Healthy, st.Replace, st.Error = api.StateRunning, true, false, ""
				})
			}
			continue
		}
		if inStartPeriod {
			continue // failures while starting up do not count
		}
		failures++
		msg := fmt.Sprintf("health check failed %d times: %v", failures, err)
		switch {
		case failures >= 2*h.Retries:
			// Unhealthy for another round of retries: the server replaces it.
			report(func(st *api.Status) {
				st.State, st.Healthy, st.Replace, st.Error = api.StateUnhealthy, false, true, msg
			})
		case failures >= h.Retries:
			healthy = false
			report(func(st *api.Status) { st.State, st.Healthy, st.Error = api.StateUnhealthy, false, msg })
		}
	}
}

// probe runs one health check.
func (a *Agent) probe(ctx context.Context, h *api.Health, containerID, address string) error {
	ctx, cancel := context.WithTimeout(ctx, h.Timeout.D())
	defer cancel()
	switch {
	case h.HTTP != "":
		req, err := http.NewRequestWithContext(ctx, "GET", "http://"+address+h.HTTP, nil)
		if err != nil {
			return err
		}
		resp, err := probeClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode >= 400 {
			return fmt.Errorf("GET %s: %s", h.HTTP, resp.Status)
		}
		return nil
	case h.TCP:
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", address)
		if err != nil {
			return err
		}
		return conn.Close()
	default:
		code, err := a.Runtime.Exec(ctx, containerID, h.Exec)
		if err != nil {
			return err
		}
		if code != 0 {
			return fmt.Errorf("%v exited with %d", h.Exec, code)
		}
		return nil
	}
}

// probeClient keeps no connections: each check should see a fresh connect,
// as a new client would.
var probeClient = &http.Client{
	Transport: &http.Transport{DisableKeepAlives: true},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}
