package gateway

import (
	"context"
	"errors"
	"math"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"
)

// Waker asks the server to wake an idled app (POST /v1/apps/{name}/wake is
// done by the caller's implementation).
type Waker interface {
	Wake(ctx context.Context, app string) error
}

// wakeState is the wake of one app in progress: every request for the app
// that arrives meanwhile waits on it, and one Wake call serves them all.
type wakeState struct {
	app     string
	ready   chan struct{} // closed when a table gives the app an upstream
	failed  chan struct{} // closed when the wake failed; err says why
	err     error
	started time.Time // of the last Wake call
	calling bool      // a Wake call is in flight
}

// errNoWaker is the wake error of a proxy made without a Waker.
var errNoWaker = errors.New("the gateway cannot wake apps (no waker)")

// awaitUpstreams holds a request for an app without upstreams. An app that
// scales to zero is woken (one Wake call for all the requests that arrive
// while it wakes) and the request goes on, with the app as the table then
// has it, as soon as a table gives the app an upstream. Otherwise the
// request is answered here (503) and awaitUpstreams returns nil.
func (p *Proxy) awaitUpstreams(ctx *fasthttp.RequestCtx, a *appState) *appState {
	if !a.idleEnabled {
		plainError(ctx, fasthttp.StatusServiceUnavailable, "app "+a.name+" has no healthy instance\n")
		a.m.observe(fasthttp.StatusServiceUnavailable, time.Since(ctx.Time()))
		return nil
	}
	ws, cur := p.joinWake(a)
	if cur != nil {
		return cur
	}
	t := time.NewTimer(a.wakeTimeout)
	defer t.Stop()
	select {
	case <-ws.ready:
		if cur := p.rt.Load().byName[a.name]; cur != nil && len(cur.ups) > 0 {
			return cur
		}
		plainError(ctx, fasthttp.StatusServiceUnavailable, "app "+a.name+" has no healthy instance\n")
	case <-ws.failed:
		plainError(ctx, fasthttp.StatusServiceUnavailable, "app "+a.name+" could not be woken: "+ws.err.Error()+"\n")
	case <-t.C:
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(retryAfter(a.wakeTimeout)))
		plainError(ctx, fasthttp.StatusServiceUnavailable, "app "+a.name+" is waking up but was not ready within "+a.wakeTimeout.String()+"; retry shortly\n")
	case <-p.done:
		plainError(ctx, fasthttp.StatusServiceUnavailable, "gateway: shutting down\n")
	}
	a.m.observe(ctx.Response.StatusCode(), time.Since(ctx.Time()))
	return nil
}

// retryAfter is the Retry-After (seconds) of a request that waited
// wakeTimeout in vain: a few seconds, as the app is likely almost up.
func retryAfter(wakeTimeout time.Duration) int {
	return int(min(5, max(1, math.Ceil(wakeTimeout.Seconds()))))
}

// joinWake returns the wake of a's app in progress, starting one (and a
// Wake call) if there is none, or if the last Wake call is older than the
// app's wake timeout and has not brought an upstream. When the current
// table already has an upstream for the app, it returns that app instead.
func (p *Proxy) joinWake(a *appState) (*wakeState, *appState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cur := p.rt.Load().byName[a.name]; cur != nil && len(cur.ups) > 0 {
		return nil, cur
	}
	ws := p.waking[a.name]
	if ws == nil {
		ws = &wakeState{app: a.name, ready: make(chan struct{}), failed: make(chan struct{})}
		p.waking[a.name] = ws
	}
	if !ws.calling && (ws.started.IsZero() || time.Since(ws.started) >= a.wakeTimeout) {
		ws.calling = true
		ws.started = time.Now()
		p.wakeCount.Add(1)
		p.m.wakes.WithLabelValues(a.name).Inc()
		go p.callWake(ws, a.wakeTimeout)
	}
	return ws, nil
}

// callWake asks the Waker once. On failure, the requests waiting get the
// error, and the next request starts a new wake.
func (p *Proxy) callWake(ws *wakeState, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(p.baseCtx, timeout)
	defer cancel()
	err := errNoWaker
	if p.waker != nil {
		err = p.waker.Wake(ctx, ws.app)
	}
	if err != nil {
		p.log.Warn("gateway: wake failed", "app", ws.app, "err", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	ws.calling = false
	if err != nil && p.waking[ws.app] == ws {
		ws.err = err
		close(ws.failed)
		delete(p.waking, ws.app)
	}
}

// settleWakesLocked releases the requests waiting for apps that rt gives
// an upstream, and fails those of apps it no longer routes.
func (p *Proxy) settleWakesLocked(rt *routing) {
	for name, ws := range p.waking {
		a := rt.byName[name]
		switch {
		case a == nil:
			ws.err = errors.New("the app is no longer routed")
			close(ws.failed)
			delete(p.waking, name)
		case len(a.ups) > 0:
			p.m.wakeTime.WithLabelValues(name).Observe(time.Since(ws.started).Seconds())
			close(ws.ready)
			delete(p.waking, name)
		}
	}
}
