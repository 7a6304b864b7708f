package gateway

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

const (
	// maxReplayBody is the largest request body kept in memory so that the
	// request can be sent again to another upstream after a connect failure.
	maxReplayBody = 64 << 10
	// maxBufferedBody is the largest response body read whole before it is
	// sent on; larger ones, and those of unknown length, are streamed.
	maxBufferedBody = 512 << 10
	// connectTimeout bounds connecting to an upstream (less when the route's
	// timeout is shorter).
	connectTimeout = 3 * time.Second
	// staleAfter: a pooled connection idle longer than this is not used for
	// a request that could not be retried if the upstream had closed it.
	staleAfter = 2 * time.Second
	// An upstream that refused a connection is skipped for downMin, doubling
	// with each further failure up to downMax, until a request succeeds.
	downMin = 2 * time.Second
	downMax = 30 * time.Second
	// upstreamMaxConns bounds the connections to one upstream; a request that
	// finds them all busy waits up to upstreamConnWait for one.
	upstreamMaxConns = 4096
	upstreamConnWait = 10 * time.Second
	// upstreamIdle closes pooled connections unused this long.
	upstreamIdle = 30 * time.Second
	// idleTimeout closes a client connection without a request for this
	// long (up to idleSlack less).
	idleTimeout = 2 * time.Minute
	idleSlack   = idleTimeout / 10
	// shutdownWait bounds how long Shutdown waits for requests in flight.
	shutdownWait = 10 * time.Second
)

// Proxy is the gateway's HTTP server: it routes each request by its Host
// header through the current Table to one of the app's upstreams.
type Proxy struct {
	waker    Waker
	log      *slog.Logger
	m        *metrics
	onAccess func(app string)

	rt atomic.Pointer[routing]

	// mu guards the upstreams, the wakes in progress and the live set, and
	// serialises SetTable.
	mu     sync.Mutex
	ups    map[string]*upstream // by address, kept across tables
	gauges map[string]bool      // apps with an upstreams gauge
	waking map[string]*wakeState
	live   map[aborter]struct{} // streams and hijacked connections, ended by Shutdown

	wakeCount atomic.Int64

	srv     *fasthttp.Server
	done    chan struct{} // closed by Shutdown
	stop    sync.Once
	baseCtx context.Context
	cancel  context.CancelFunc

	// dial connects to upstreams (tests wrap it to count or fail connects).
	dial func(addr string, timeout time.Duration) (net.Conn, error)
}

// routing is a Table together with the proxy's live state of each app.
type routing struct {
	table  *Table
	apps   []*appState // parallel to table.apps
	byName map[string]*appState
}

// appState is one app of a routing: its upstreams and settings with the
// defaults applied.
type appState struct {
	name        string
	ups         []*upstream
	rr          atomic.Uint32 // where the search for the least busy starts: ties go round robin
	idleEnabled bool
	wakeTimeout time.Duration
	timeout     time.Duration // 0: none
	m           *appMetrics

	// Revisions (see split.go). revs are the app's revisions, each with a
	// view of the app restricted to its upstreams; revOf is parallel to ups
	// (nil when the table gives no revisions); rev is set in a view only.
	revs  []*revState
	revOf []*revState
	rev   *revState
	split *splitState
}

// upstream is one instance address with its connection pool and passive
// health. The same upstream serves every table that lists its address.
type upstream struct {
	addr      string
	hc        *fasthttp.HostClient
	inflight  atomic.Int64 // requests sent and not yet answered in full
	fails     atomic.Int32 // connect failures in a row
	downUntil atomic.Int64 // unix nanos until which it is skipped; 0: in rotation
	retired   atomic.Bool  // no longer listed: its connections are closed after use
	log       *slog.Logger
}

// NewProxy makes a proxy with an empty table. w wakes idled apps; the
// metrics are registered on reg (a private registry when nil); log may be
// nil.
func NewProxy(w Waker, reg prometheus.Registerer, log *slog.Logger) *Proxy {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{
		waker:  w,
		log:    log,
		m:      newMetrics(reg),
		ups:    map[string]*upstream{},
		gauges: map[string]bool{},
		waking: map[string]*wakeState{},
		live:   map[aborter]struct{}{},
		done:   make(chan struct{}),
		dial: func(addr string, timeout time.Duration) (net.Conn, error) {
			return (&net.Dialer{Timeout: timeout}).Dial("tcp", addr)
		},
	}
	p.baseCtx, p.cancel = context.WithCancel(context.Background())
	p.srv = &fasthttp.Server{
		Handler:                      p.handle,
		NoDefaultServerHeader:        true, // the upstream's Server header, if any, goes through
		NoDefaultContentType:         true,
		DisablePreParseMultipartForm: true,
		StreamRequestBody:            true,    // large uploads are streamed to the upstream
		ReadBufferSize:               8 << 10, // bounds a request's header
		WriteBufferSize:              8 << 10, // a response up to this is sent in one write
		IdleTimeout:                  idleTimeout,
		CloseOnShutdown:              true,
		Logger:                       fasthttpLogger{log},
	}
	p.rt.Store(&routing{table: NewTable(nil), byName: map[string]*appState{}})
	return p
}

// OnAccess sets f to be called with the app's name for every request
// routed to an app. Set it before Serve; f must be quick (batch writes).
func (p *Proxy) OnAccess(f func(app string)) { p.onAccess = f }

// Wakes returns how many wakes the proxy has asked for.
func (p *Proxy) Wakes() int64 { return p.wakeCount.Load() }

// MetricsHandler serves the proxy's metrics (and whatever else the
// registry given to NewProxy gathers) in the Prometheus format.
func (p *Proxy) MetricsHandler() http.Handler { return p.m.handler }

// Serve serves the proxy on ln until Shutdown.
func (p *Proxy) Serve(ln net.Listener) error {
	select {
	case <-p.done:
		return errors.New("gateway: proxy is shut down")
	default:
	}
	return p.srv.Serve(srvListener{ln})
}

// Shutdown stops accepting connections, answers requests held for a wake
// with 503, ends streams and WebSocket connections, and waits (up to 10s)
// for the requests in flight.
func (p *Proxy) Shutdown() error {
	p.stop.Do(func() {
		close(p.done)
		p.cancel()
	})
	p.mu.Lock()
	for c := range p.live {
		c.abort()
	}
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), shutdownWait)
	defer cancel()
	err := p.srv.ShutdownWithContext(ctx)
	p.mu.Lock()
	for _, u := range p.ups {
		u.hc.CloseIdleConnections()
	}
	p.mu.Unlock()
	return err
}

// SetTable swaps in t. Requests in flight finish on the upstreams they
// chose; new requests see t at once. Upstreams keep their connection pools
// and health across tables; one no longer listed is dropped (its
// connections close once idle). Requests held for a wake go on as soon as
// their app has an upstream.
func (p *Proxy) SetTable(t *Table) {
	if t == nil {
		t = NewTable(nil)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	rt := &routing{table: t, apps: make([]*appState, len(t.apps)), byName: make(map[string]*appState, len(t.apps))}
	ups := make(map[string]*upstream, len(p.ups))
	for i := range t.apps {
		ar := &t.apps[i]
		a := &appState{
			name:        ar.App,
			idleEnabled: ar.IdleEnabled,
			wakeTimeout: ar.WakeTimeout,
			timeout:     ar.Timeout,
			m:           p.m.app(ar.App),
		}
		if a.wakeTimeout <= 0 {
			a.wakeTimeout = DefaultWakeTimeout
		}
		switch {
		case a.timeout == 0:
			a.timeout = DefaultTimeout
		case a.timeout < 0:
			a.timeout = 0
		}
		get := func(addr string) *upstream {
			addr = strings.TrimSpace(addr)
			if addr == "" {
				return nil
			}
			u := ups[addr]
			if u == nil {
				if u = p.ups[addr]; u == nil {
					u = p.newUpstream(addr)
				}
				ups[addr] = u
			}
			return u
		}
		for _, addr := range ar.Upstreams {
			a.ups = addUpstream(a.ups, get(addr))
		}
		p.setRevisions(a, ar, get)
		rt.apps[i] = a
		if _, ok := rt.byName[a.name]; !ok {
			rt.byName[a.name] = a
		}
	}
	for addr, u := range p.ups {
		if ups[addr] == nil {
			u.retired.Store(true)
			u.hc.CloseIdleConnections()
		}
	}
	p.ups = ups
	p.rt.Store(rt)

	gauges := make(map[string]bool, len(rt.byName))
	for name, a := range rt.byName {
		p.m.upstreams.WithLabelValues(name).Set(float64(len(a.ups)))
		gauges[name] = true
	}
	for name := range p.gauges {
		if !gauges[name] {
			p.m.upstreams.DeleteLabelValues(name)
		}
	}
	p.gauges = gauges
	p.settleWakesLocked(rt)
}

// handle serves one request.
func (p *Proxy) handle(ctx *fasthttp.RequestCtx) {
	defer func() {
		if r := recover(); r != nil {
			p.log.Error("gateway: panic serving request", "panic", r, "host", string(ctx.Request.Header.Host()))
			ctx.Response.Reset()
			plainError(ctx, fasthttp.StatusInternalServerError, "gateway: internal error\n")
		}
	}()
	rt := p.rt.Load()
	i, direct := rt.table.route(ctx.Request.Header.Host())
	if i < 0 {
		p.notFound(ctx)
		return
	}
	a := rt.apps[i]
	if p.onAccess != nil {
		p.onAccess(a.name)
	}
	if v := ctx.Request.Header.PeekCanonical(hXBerthRevision); len(v) > 0 {
		n, ok := parseRevision(v)
		if !ok {
			plainError(ctx, fasthttp.StatusBadRequest, "gateway: X-Berth-Revision: want a revision number\n")
			a.m.observe(fasthttp.StatusBadRequest, time.Since(ctx.Time()))
			return
		}
		direct = n
	}
	start := ctx.Time()
	if len(a.ups) == 0 {
		if a = p.awaitUpstreams(ctx, a); a == nil {
			return // answered
		}
		start = time.Now() // a revision's latency leaves out the wake
	}
	p.serve(ctx, a, direct, start)
}

// addUpstream appends u to list unless it is nil or listed already.
func addUpstream(list []*upstream, u *upstream) []*upstream {
	if u == nil {
		return list
	}
	for _, v := range list {
		if v == u {
			return list
		}
	}
	return append(list, u)
}

func (p *Proxy) notFound(ctx *fasthttp.RequestCtx) {
	host := ctx.Request.Header.Host()
	if len(host) > 300 {
		host = host[:300]
	}
	plainError(ctx, fasthttp.StatusNotFound, "no app is routed for host "+strconv.Quote(string(host))+"\n")
	p.m.unknownHost(time.Since(ctx.Time()))
}

// plainError answers with a short text body.
func plainError(ctx *fasthttp.RequestCtx, code int, msg string) {
	ctx.Response.SetStatusCode(code)
	ctx.Response.Header.SetContentType("text/plain; charset=utf-8")
	ctx.Response.SetBodyString(msg)
}

// Header names, canonical.
var (
	hXForwardedFor   = []byte("X-Forwarded-For")
	hXForwardedProto = []byte("X-Forwarded-Proto")
	hXForwardedHost  = []byte("X-Forwarded-Host")
	hXRequestID      = []byte("X-Request-Id")
	hXBerthRevision  = []byte("X-Berth-Revision")
	hSetCookie       = []byte("Set-Cookie")
	hConnection      = []byte("Connection")
	hUpgrade         = []byte("Upgrade")
	vHTTP            = []byte("http")
	vHTTPS           = []byte("https")
	vHTTP11          = []byte("HTTP/1.1")
	vUpgrade         = []byte("Upgrade")
)

// forward proxies the request to one of a's upstreams, and to a second one
// when the first could not be connected to and the request can be sent
// again (it has no body, or a body of at most maxReplayBody). It returns
// the revision of the upstream that answered (or last failed), when known.
func (p *Proxy) forward(ctx *fasthttp.RequestCtx, a *appState) (rs *revState) {
	rs = a.rev
	req := &ctx.Request
	ws, reqID := prepareRequest(ctx)
	if ws {
		p.proxyWebSocket(ctx, a)
		return rs
	}
	replayable, err := replayableBody(req)
	if err != nil {
		plainError(ctx, fasthttp.StatusBadRequest, "gateway: reading the request body: "+err.Error()+"\n")
		return rs
	}
	retrySafe := replayable && isIdempotent(req)
	var tried *upstream
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		i := a.pickIndex(tried)
		if i < 0 {
			break
		}
		u := a.ups[i]
		if a.revOf != nil {
			rs = a.revOf[i]
		}
		err = p.roundTrip(ctx, u, a.timeout, retrySafe)
		if err == nil {
			u.succeeded()
			// The client learns the id too, unless the app answered with its own.
			if len(ctx.Response.Header.PeekBytes(hXRequestID)) == 0 {
				ctx.Response.Header.SetCanonical(hXRequestID, reqID)
			}
			return rs
		}
		lastErr, tried = err, u
		var ce *connectError
		if errors.As(err, &ce) {
			u.connectFailed(ce.err)
			if rs != nil {
				rs.stats.connectFailed()
			}
		} else if !errors.Is(err, fasthttp.ErrNoFreeConns) {
			break // sent, maybe in part: not sent again
		}
		if !replayable {
			break
		}
	}
	if lastErr != nil {
		p.log.Debug("gateway: upstream failed", "app", a.name, "upstream", tried.addr, "err", lastErr)
	}
	ctx.Response.Reset()
	ctx.Response.Header.SetNoDefaultContentType(true)
	switch {
	case lastErr == nil:
		plainError(ctx, fasthttp.StatusServiceUnavailable, "app "+a.name+" has no healthy instance\n")
	case isTimeout(lastErr):
		plainError(ctx, fasthttp.StatusGatewayTimeout, "app "+a.name+": upstream timed out\n")
	default:
		plainError(ctx, fasthttp.StatusBadGateway, "app "+a.name+": "+lastErr.Error()+"\n")
	}
	if len(reqID) > 0 {
		ctx.Response.Header.SetCanonical(hXRequestID, reqID)
	}
	return rs
}

func isIdempotent(req *fasthttp.Request) bool {
	switch string(req.Header.Method()) {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, fasthttp.ErrTimeout) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// errStale marks a failure on a pooled connection the upstream had
// closed; the request is tried once more on a new connection.
var errStale = errors.New("upstream closed the connection")

// roundTrip sends the request to u and reads the response header into
// ctx.Response. A body of known length up to maxBufferedBody is read whole;
// any other body is streamed to the client as it comes, each read flushed.
// retrySafe: the request may be sent again if a pooled connection turns out
// to be closed.
func (p *Proxy) roundTrip(ctx *fasthttp.RequestCtx, u *upstream, timeout time.Duration, retrySafe bool) error {
	req, resp := &ctx.Request, &ctx.Response
	hc := u.hc
	u.inflight.Add(1)
	dialTimeout := connectTimeout
	if timeout > 0 && timeout < dialTimeout {
		dialTimeout = timeout
	}
	streamedReq := req.IsBodyStream()
	for try := 0; ; try++ {
		cc, err := hc.AcquireConn(dialTimeout, false)
		if err != nil {
			u.inflight.Add(-1)
			return err
		}
		conn := cc.Conn()
		lastUse := cc.LastUseTime()
		reused := !lastUse.IsZero()
		if reused && !retrySafe && time.Since(lastUse) > staleAfter {
			// The upstream may have closed it meanwhile, and this request
			// could not be sent again: take a fresh connection.
			hc.CloseConn(cc)
			try--
			continue
		}
		if streamedReq {
			// The upload takes as long as it takes; the timeout counts from
			// its end.
			err = setDeadline(conn, 0)
			clearReadDeadline(ctx.Conn())
		} else {
			err = setDeadline(conn, timeout)
		}
		if err == nil {
			bw := hc.AcquireWriter(conn)
			err = req.Write(bw)
			if err == nil {
				err = bw.Flush()
			}
			hc.ReleaseWriter(bw)
		}
		if err == nil && streamedReq && timeout > 0 {
			err = setReadDeadline(conn, time.Now().Add(timeout))
		}
		if err != nil {
			hc.CloseConn(cc)
			if reused && retrySafe && try == 0 && !isTimeout(err) {
				hc.CloseIdleConnections() // the others are likely closed too
				continue
			}
			u.inflight.Add(-1)
			return err
		}

		br := hc.AcquireReader(conn)
		resp.SkipBody = req.Header.IsHead()
		err = readResponseHeader(resp, br)
		if err != nil {
			hc.ReleaseReader(br)
			hc.CloseConn(cc)
			if err == io.EOF && reused && retrySafe && try == 0 {
				hc.CloseIdleConnections()
				continue
			}
			u.inflight.Add(-1)
			if err == io.EOF {
				err = errStale
			}
			return err
		}
		code := resp.StatusCode()
		if code == fasthttp.StatusSwitchingProtocols {
			hc.ReleaseReader(br)
			hc.CloseConn(cc)
			u.inflight.Add(-1)
			return errors.New("upstream switched protocols without being asked to")
		}
		keep := !resp.Header.ConnectionClose()
		cl := resp.Header.ContentLength()
		noBody := resp.SkipBody || code < 200 || code == fasthttp.StatusNoContent || code == fasthttp.StatusNotModified
		if noBody || (cl >= 0 && cl <= maxBufferedBody && !isEventStream(resp)) {
			if !noBody {
				err = resp.ReadBody(br, 0)
			}
			hc.ReleaseReader(br)
			if err != nil || !keep || u.retired.Load() {
				hc.CloseConn(cc)
			} else {
				hc.ReleaseConn(cc)
			}
			u.inflight.Add(-1)
			if err != nil {
				return err
			}
			cleanResponseHeader(&resp.Header)
			return nil
		}

		// Stream the body: it may never end (server-sent events), or be
		// large. The route's timeout no longer applies.
		_ = setReadDeadline(conn, time.Time{})
		uresp := fasthttp.AcquireResponse()
		resp.Header.CopyTo(&uresp.Header) // framing (and trailers) of the body read below
		uresp.StreamBody = true
		_ = uresp.ReadBody(br, 0) // with StreamBody, this only sets up the stream
		s := &bodyStream{
			p:     p,
			u:     u,
			body:  uresp.BodyStream(),
			conn:  conn,
			keep:  keep,
			uresp: uresp,
		}
		s.release = func(reuse bool) {
			fasthttp.ReleaseResponse(uresp)
			hc.ReleaseReader(br)
			if reuse && !u.retired.Load() {
				hc.ReleaseConn(cc)
			} else {
				hc.CloseConn(cc)
			}
		}
		cleanResponseHeader(&resp.Header)
		size := -1
		if cl >= 0 {
			size = cl
		}
		// The client gets the header at once, and each read from the
		// upstream as a chunk of its own, flushed.
		resp.ImmediateHeaderFlush = true
		resp.SetBodyStream(s, size)
		p.track(s)
		return nil
	}
}
