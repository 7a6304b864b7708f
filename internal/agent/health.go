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

// Without a health check, an instance is healthy once its container has
// run this long; after a crash (a run shorter than stableRun) twice as
// long per crash in a row, at most stableRun: a crash loop never counts.
// A variable for the package's tests, which use a shorter one.
var uncheckedStable = 5 * time.Second

// uncheckedUptime is how long a container without a health check must
// run to be healthy, after crashes short runs in a row.
func uncheckedUptime(crashes int) time.Duration {
	return min(uncheckedStable<<min(max(crashes, 0), 8), stableRun)
}

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
//
// It runs on the instance's worker, which alone changes l.crashes.
func (a *Agent) startProbe(ctx context.Context, inst api.Instance, l *local, containerID, address string, healthy bool) {
	l.stopProbe()
	pctx, cancel := context.WithCancel(ctx)
	l.mu.Lock()
	l.probeCancel, l.probeFor = cancel, containerID
	startedAt := l.status.StartedAt
	l.mu.Unlock()
	if inst.Spec.Health == nil {
		go a.watchUnchecked(pctx, inst, l, containerID, startedAt, uncheckedUptime(l.crashes), healthy)
		return
	}
	go a.probeLoop(pctx, inst, l, containerID, address, healthy)
}

// reportHealth applies a change of health unless the prober of
// containerID was stopped meanwhile.
func (a *Agent) reportHealth(ctx context.Context, name string, l *local, containerID string, change func(*api.Status)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ctx.Err() != nil || l.probeFor != containerID {
		return
	}
	st := l.status
	change(&st)
	if err := a.reportLocked(ctx, name, l, st); err != nil && ctx.Err() == nil {
		a.Log.Warn("report health", "instance", name, "err", err)
	}
}

// watchUnchecked makes an instance without a health check healthy once
// its container has stayed up for uptime since startedAt (the same
// start: a restart is another container run, with a prober of its own).
func (a *Agent) watchUnchecked(ctx context.Context, inst api.Instance, l *local, containerID string, startedAt time.Time, uptime time.Duration, healthy bool) {
	for !healthy {
		wait := uptime
		if !startedAt.IsZero() {
			wait = min(max(uptime-time.Since(startedAt), 0), uptime)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		c, err := a.Runtime.Inspect(ctx, containerID)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			// The engine may be away a moment: look again, the uptime is met.
			a.Log.Warn("inspect container for its uptime", "instance", inst.Name, "err", err)
			uptime, startedAt = time.Second, time.Time{}
			continue
		case !c.Running || !startedAt.IsZero() && !c.StartedAt.Equal(startedAt):
			return // exited or restarted meanwhile: the agent counts that
		}
		healthy = true
	}
	a.reportHealth(ctx, inst.Name, l, containerID, func(st *api.Status) {
		st.State, st.Healthy, st.EverHealthy, st.Error = api.StateRunning, true, true, ""
	})
}

func (a *Agent) probeLoop(ctx context.Context, inst api.Instance, l *local, containerID, address string, healthy bool) {
	h := inst.Spec.Health
	report := func(change func(*api.Status)) { a.reportHealth(ctx, inst.Name, l, containerID, change) }
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
					st.State, st.Healthy, st.EverHealthy, st.Replace, st.Error = api.StateRunning, true, true, false, ""
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
