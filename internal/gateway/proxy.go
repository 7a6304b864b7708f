package gateway

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// Waker asks the server to wake an idled app.
type Waker interface {
	Wake(ctx context.Context, app string) error
}

const (
	maxReplayBody  = 64 << 10         // a request body up to this is retried on another instance
	downFor        = 5 * time.Second  // an instance that refused a connection is skipped this long
	defaultWake    = 30 * time.Second // how long a request waits for a wake by default
	upstreamConns  = 512              // keep-alive connections per instance
	streamChunkBuf = 32 << 10
)

// Proxy routes requests by Host to the upstreams of the current table.
type Proxy struct {
	table atomic.Pointer[routing]
	waker Waker
	log   *slog.Logger
	m     *metrics

	onAccess func(app string)

	mu        sync.Mutex
	upstreams map[string]*upstream // by address, kept across tables for their connection pools
	waking    map[string]*wake     // by app

	wakes    atomic.Int64
	server   *fasthttp.Server
	idPrefix string
	idSeq    atomic.Uint64
}

// routing is a Table with each app's live upstream state.
type routing struct {
	table *Table
	apps  map[*AppRoutes]*appUpstreams
}

type appUpstreams struct {
	list []*upstream
	next atomic.Uint32 // where the search for the least busy starts, to break ties in turn
}

type upstream struct {
	addr        string
	client      *fasthttp.HostClient
	outstanding atomic.Int64
	downUntil   atomic.Int64 // unix nanos
}

type wake struct {
	done    chan struct{} // closed when the app has an upstream or the wake failed
	err     error
	started time.Time
}

// NewProxy makes a proxy with an empty table.
func NewProxy(w Waker, reg prometheus.Registerer, log *slog.Logger) *Proxy {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	p := &Proxy{
		waker: w, log: log, m: newMetrics(reg),
		upstreams: map[string]*upstream{}, waking: map[string]*wake{},
		idPrefix: hex.EncodeToString(b) + "-",
	}
	p.SetTable(NewTable(nil))
	return p
}

// OnAccess sets what is called for every request routed to an app.
func (p *Proxy) OnAccess(f func(app string)) { p.onAccess = f }

// Wakes is how many wakes the proxy asked for.
func (p *Proxy) Wakes() int64 { return p.wakes.Load() }

// MetricsHandler serves the Prometheus metrics.
func (p *Proxy) MetricsHandler() http.Handler { return p.m.handler }

// SetTable swaps the routing table. Requests in flight finish on the
// upstreams they chose; requests held for a wake go on once their app has
// an upstream.
func (p *Proxy) SetTable(t *Table) {
	r := &routing{table: t, apps: make(map[*AppRoutes]*appUpstreams, len(t.apps))}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range t.apps {
		a := &t.apps[i]
		ups := &appUpstreams{}
		for _, addr := range a.Upstreams {
			ups.list = append(ups.list, p.upstreamLocked(addr))
		}
		r.apps[a] = ups
		p.m.upstreams.WithLabelValues(a.App).Set(float64(len(ups.list)))
		if w := p.waking[a.App]; w != nil && len(ups.list) > 0 {
			p.m.wakeTime.WithLabelValues(a.App).Observe(time.Since(w.started).Seconds())
			close(w.done)
			delete(p.waking, a.App)
		}
	}
	p.table.Store(r)
}

func (p *Proxy) upstreamLocked(addr string) *upstream {
	if u := p.upstreams[addr]; u != nil {
		return u
	}
	u := &upstream{addr: addr}
	u.client = &fasthttp.HostClient{
		Addr:                          addr,
		MaxConns:                      upstreamConns,
		MaxIdleConnDuration:           30 * time.Second,
		NoDefaultUserAgentHeader:      true,
		DisableHeaderNamesNormalizing: true,
		DisablePathNormalizing:        true,
		StreamResponseBody:            true,
		ReadBufferSize:                16 << 10,
		Dial: func(addr string) (net.Conn, error) {
			c, err := fasthttp.DialTimeout(addr, 3*time.Second)
			if err != nil {
				return nil, &dialError{err}
			}
			return c, nil
		},
	}
	p.upstreams[addr] = u
	return u
}

// dialError marks a failure to connect: nothing reached the instance, so
// the request may go to another one.
type dialError struct{ err error }

func (e *dialError) Error() string { return "connect: " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// Serve serves the proxy on ln until Shutdown.
func (p *Proxy) Serve(ln net.Listener) error {
	p.server = &fasthttp.Server{
		Handler:                       p.handle,
		Name:                          "berth",
		NoDefaultServerHeader:         true,
		NoDefaultContentType:          true,
		DisableHeaderNamesNormalizing: true,
		DisablePreParseMultipartForm:  true,
		ReadBufferSize:                16 << 10,
		IdleTimeout:                   90 * time.Second,
		CloseOnShutdown:               true,
	}
	return p.server.Serve(ln)
}

// Shutdown stops accepting and waits for requests in flight.
func (p *Proxy) Shutdown() error {
	if p.server == nil {
		return nil
	}
	return p.server.Shutdown()
}

func (p *Proxy) handle(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	r := p.table.Load()
	host := string(ctx.Host())
	app, ok := r.table.Lookup(host)
	if !ok {
		ctx.Error("no app is routed for host "+normalizeHost(host)+"\n", fasthttp.StatusNotFound)
		return
	}
	if p.onAccess != nil {
		p.onAccess(app.App)
	}
	ups := r.apps[app]
	if len(ups.list) == 0 {
		if ups, ok = p.waitForUpstreams(ctx, app); !ok {
			p.count(app.App, ctx.Response.StatusCode(), start)
			return
		}
	}
	if isWebSocket(ctx) {
		p.proxyWebSocket(ctx, ups)
		p.count(app.App, fasthttp.StatusSwitchingProtocols, start)
		return
	}
	p.forward(ctx, app, ups)
	p.count(app.App, ctx.Response.StatusCode(), start)
}

func (p *Proxy) count(app string, code int, start time.Time) {
	p.m.requests.WithLabelValues(app, strconv.Itoa(code)).Inc()
	p.m.latency.WithLabelValues(app).Observe(time.Since(start).Seconds())
}

// pick returns the least busy upstream not known to be down (all of them
// when all are down), skipping the one already tried.
func (ups *appUpstreams) pick(skip *upstream) *upstream {
	n := len(ups.list)
	if n == 0 {
		return nil
	}
	now := time.Now().UnixNano()
	first := int(ups.next.Add(1)) % n
	var best, bestDown *upstream
	for i := 0; i < n; i++ {
		u := ups.list[(first+i)%n]
		if u == skip {
			continue
		}
		if u.downUntil.Load() > now {
			if bestDown == nil || u.outstanding.Load() < bestDown.outstanding.Load() {
				bestDown = u
			}
			continue
		}
		if best == nil || u.outstanding.Load() < best.outstanding.Load() {
			best = u
		}
	}
	if best == nil {
		return bestDown
	}
	return best
}

// forward sends the request to one upstream, and once more to another when
// the first could not be connected to and the request can be replayed.
func (p *Proxy) forward(ctx *fasthttp.RequestCtx, app *AppRoutes, ups *appUpstreams) {
	req := &ctx.Request
	p.prepareRequest(ctx)
	resp := fasthttp.AcquireResponse()
	replayable := len(req.Body()) <= maxReplayBody && !req.IsBodyStream()
	var tried *upstream
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		u := ups.pick(tried)
		if u == nil {
			break
		}
		tried = u
		u.outstanding.Add(1)
		if app.Timeout > 0 {
			err = u.client.DoTimeout(req, resp, app.Timeout)
		} else {
			err = u.client.Do(req, resp)
		}
		u.outstanding.Add(-1)
		var de *dialError
		if err == nil || !errors.As(err, &de) {
			break
		}
		u.downUntil.Store(time.Now().Add(downFor).UnixNano())
		if !replayable {
			break
		}
	}
	if err != nil {
		fasthttp.ReleaseResponse(resp)
		code := fasthttp.StatusBadGateway
		if errors.Is(err, fasthttp.ErrTimeout) {
			code = fasthttp.StatusGatewayTimeout
		}
		ctx.Error("upstream of "+app.App+": "+err.Error()+"\n", code)
		return
	}
	p.writeResponse(ctx, resp)
}

// writeResponse hands the upstream's answer to the client: small bodies at
// once, streams (unknown length, server-sent events) as they come, each
// read flushed.
func (p *Proxy) writeResponse(ctx *fasthttp.RequestCtx, resp *fasthttp.Response) {
	resp.Header.CopyTo(&ctx.Response.Header)
	dropHopHeaders(&ctx.Response.Header)
	if resp.Header.ContentLength() >= 0 && !isEventStream(resp) {
		ctx.Response.SetBody(resp.Body())
		fasthttp.ReleaseResponse(resp)
		return
	}
	stream := resp.BodyStream()
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		defer fasthttp.ReleaseResponse(resp)
		defer resp.CloseBodyStream()
		buf := make([]byte, streamChunkBuf)
		for {
			n, err := stream.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return
				}
				if w.Flush() != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
}

func isEventStream(resp *fasthttp.Response) bool {
	ct := resp.Header.ContentType()
	return len(ct) >= 17 && string(ct[:17]) == "text/event-stream"
}

// prepareRequest sets the forwarding headers and drops hop-by-hop ones.
func (p *Proxy) prepareRequest(ctx *fasthttp.RequestCtx) {
	h := &ctx.Request.Header
	ip := ctx.RemoteIP().String()
	if prior := h.Peek("X-Forwarded-For"); len(prior) > 0 {
		h.Set("X-Forwarded-For", string(prior)+", "+ip)
	} else {
		h.Set("X-Forwarded-For", ip)
	}
	if len(h.Peek("X-Forwarded-Proto")) == 0 {
		h.Set("X-Forwarded-Proto", "http")
	}
	if len(h.Peek("X-Forwarded-Host")) == 0 {
		h.SetBytesV("X-Forwarded-Host", ctx.Host())
	}
	if len(h.Peek("X-Request-Id")) == 0 {
		h.Set("X-Request-Id", p.idPrefix+strconv.FormatUint(p.idSeq.Add(1), 36))
	}
	dropHopRequestHeaders(h)
}

var hopHeaders = []string{"Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer", "Upgrade"}

func dropHopRequestHeaders(h *fasthttp.RequestHeader) {
	for _, name := range connectionTokens(h.Peek("Connection")) {
		h.Del(name)
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
	h.Del("Connection") // keep-alive to the upstream is the client's business
}

func dropHopHeaders(h *fasthttp.ResponseHeader) {
	for _, name := range connectionTokens(h.Peek("Connection")) {
		h.Del(name)
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
	h.Del("Connection")
}

// connectionTokens lists the header names a Connection header names.
func connectionTokens(v []byte) []string {
	var out []string
	start := 0
	for i := 0; i <= len(v); i++ {
		if i == len(v) || v[i] == ',' {
			tok := trimSpace(v[start:i])
			if len(tok) > 0 && !equalFold(tok, "close") && !equalFold(tok, "keep-alive") {
				out = append(out, string(tok))
			}
			start = i + 1
		}
	}
	return out
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

func isWebSocket(ctx *fasthttp.RequestCtx) bool {
	return ctx.Request.Header.ConnectionUpgrade() && equalFold(ctx.Request.Header.Peek("Upgrade"), "websocket")
}

// proxyWebSocket hands the client's connection over to an upstream: the
// upgrade request goes through as it came (plus the forwarding headers),
// then bytes are copied both ways until either side closes.
func (p *Proxy) proxyWebSocket(ctx *fasthttp.RequestCtx, ups *appUpstreams) {
	u := ups.pick(nil)
	h := &ctx.Request.Header
	ip := ctx.RemoteIP().String()
	h.Set("X-Forwarded-For", ip)
	h.Set("X-Forwarded-Host", string(ctx.Host()))
	if len(h.Peek("X-Forwarded-Proto")) == 0 {
		h.Set("X-Forwarded-Proto", "http")
	}
	upConn, err := net.DialTimeout("tcp", u.addr, 3*time.Second)
	if err != nil {
		u.downUntil.Store(time.Now().Add(downFor).UnixNano())
		ctx.Error("upstream: "+err.Error()+"\n", fasthttp.StatusBadGateway)
		return
	}
	head := append([]byte(nil), h.Header()...)
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(client net.Conn) {
		defer upConn.Close()
		if _, err := upConn.Write(head); err != nil {
			return
		}
		u.outstanding.Add(1)
		defer u.outstanding.Add(-1)
		done := make(chan struct{}, 2)
		go func() { _, _ = io.Copy(upConn, client); done <- struct{}{} }()
		go func() { _, _ = io.Copy(client, upConn); done <- struct{}{} }()
		<-done
	})
}

// waitForUpstreams holds a request for an app without healthy instances:
// an idle-enabled app is woken (one wake for all the requests that arrive
// meanwhile) and the request goes on once an instance is healthy; any other
// app gets 503 at once.
func (p *Proxy) waitForUpstreams(ctx *fasthttp.RequestCtx, app *AppRoutes) (*appUpstreams, bool) {
	if !app.IdleEnabled {
		ctx.Error("app "+app.App+" has no healthy instance\n", fasthttp.StatusServiceUnavailable)
		return nil, false
	}
	timeout := app.WakeTimeout
	if timeout <= 0 {
		timeout = defaultWake
	}
	p.mu.Lock()
	w := p.waking[app.App]
	if w == nil {
		w = &wake{done: make(chan struct{}), started: time.Now()}
		p.waking[app.App] = w
		p.wakes.Add(1)
		p.m.wakes.WithLabelValues(app.App).Inc()
		go p.wake(app.App, w, timeout)
	}
	p.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-w.done:
	case <-t.C:
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(max(1, int(timeout.Seconds()))))
		ctx.Error(fmt.Sprintf("app %s is starting; not ready within %s\n", app.App, timeout), fasthttp.StatusServiceUnavailable)
		return nil, false
	}
	if w.err != nil {
		ctx.Error(fmt.Sprintf("wake app %s: %v\n", app.App, w.err), fasthttp.StatusServiceUnavailable)
		return nil, false
	}
	r := p.table.Load()
	if a, ok := r.table.Lookup(string(ctx.Host())); ok && len(r.apps[a].list) > 0 {
		return r.apps[a], true
	}
	ctx.Error("app "+app.App+" has no healthy instance\n", fasthttp.StatusServiceUnavailable)
	return nil, false
}

// wake asks for the app to be woken; a failure releases the waiters with
// the error, and a wake that never brings an instance is forgotten after
// its timeout, so that a later request asks again.
func (p *Proxy) wake(app string, w *wake, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := p.waker.Wake(ctx, app)
	if err != nil {
		p.log.Warn("wake", "app", app, "err", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		if p.waking[app] == w {
			w.err = err
			close(w.done)
			delete(p.waking, app)
		}
		return
	}
	time.AfterFunc(timeout, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.waking[app] == w {
			delete(p.waking, app)
		}
	})
}
