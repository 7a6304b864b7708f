package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
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
		for _, addr := range ar.Upstreams {
			addr = strings.TrimSpace(addr)
			if addr == "" {
				continue
			}
			u := ups[addr]
			if u == nil {
				if u = p.ups[addr]; u == nil {
					u = p.newUpstream(addr)
				}
				ups[addr] = u
			}
			dup := false
			for _, v := range a.ups {
				dup = dup || v == u
			}
			if !dup {
				a.ups = append(a.ups, u)
			}
		}
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

func (p *Proxy) newUpstream(addr string) *upstream {
	u := &upstream{addr: addr, log: p.log}
	dial := p.dial
	u.hc = &fasthttp.HostClient{
		Addr: addr,
		DialTimeout: func(addr string, timeout time.Duration) (net.Conn, error) {
			if timeout <= 0 || timeout > connectTimeout {
				timeout = connectTimeout
			}
			c, err := dial(addr, timeout)
			if err != nil {
				return nil, &connectError{addr: addr, err: err}
			}
			return &upConn{Conn: c}, nil
		},
		MaxConns:                 upstreamMaxConns,
		MaxConnWaitTimeout:       upstreamConnWait,
		MaxIdleConnDuration:      upstreamIdle,
		ConnPoolStrategy:         fasthttp.LIFO, // the most recently used: warm, and the rest age out
		ReadBufferSize:           16 << 10,      // bounds the upstream's response header
		WriteBufferSize:          8 << 10,
		NoDefaultUserAgentHeader: true,
	}
	return u
}

// connectError is a failure to connect to an upstream: nothing was sent, so
// the request may go to another one.
type connectError struct {
	addr string
	err  error
}

func (e *connectError) Error() string { return "connect to " + e.addr + ": " + e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// connectFailed takes u out of rotation for a while.
func (u *upstream) connectFailed(err error) {
	n := u.fails.Add(1)
	d := downMin << min(n-1, 4)
	d = min(d, downMax)
	u.downUntil.Store(time.Now().Add(d).UnixNano())
	if n == 1 {
		u.log.Warn("gateway: upstream unreachable, skipping it", "upstream", u.addr, "for", d, "err", err)
	}
}

// succeeded puts u back in rotation after connect failures.
func (u *upstream) succeeded() {
	if u.fails.Load() != 0 {
		u.fails.Store(0)
		u.downUntil.Store(0)
		u.log.Info("gateway: upstream reachable again", "upstream", u.addr)
	}
}

// pick returns the upstream with the fewest outstanding requests, starting
// the search at the next one in turn so that ties go round robin. Upstreams
// out of rotation are skipped unless no other is left; skip (the one that
// just failed) never is returned.
func (a *appState) pick(skip *upstream) *upstream {
	n := len(a.ups)
	if n == 1 {
		if u := a.ups[0]; u != skip {
			return u
		}
		return nil
	}
	if n == 0 {
		return nil
	}
	i := int(a.rr.Add(1) % uint32(n))
	var best, down *upstream
	var bestLoad, downUntil, now int64
	for range n {
		u := a.ups[i]
		if i++; i == n {
			i = 0
		}
		if u == skip {
			continue
		}
		if d := u.downUntil.Load(); d != 0 {
			if now == 0 {
				now = time.Now().UnixNano()
			}
			if d > now {
				if down == nil || d < downUntil {
					down, downUntil = u, d
				}
				continue
			}
		}
		if l := u.inflight.Load(); best == nil || l < bestLoad {
			best, bestLoad = u, l
		}
	}
	if best == nil {
		return down
	}
	return best
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
	i := rt.table.index(ctx.Request.Header.Host())
	if i < 0 {
		p.notFound(ctx)
		return
	}
	a := rt.apps[i]
	if p.onAccess != nil {
		p.onAccess(a.name)
	}
	if len(a.ups) == 0 {
		if a = p.awaitUpstreams(ctx, a); a == nil {
			return // answered
		}
	}
	p.forward(ctx, a)
	a.m.observe(ctx.Response.StatusCode(), time.Since(ctx.Time()))
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
	hConnection      = []byte("Connection")
	hUpgrade         = []byte("Upgrade")
	vHTTP            = []byte("http")
	vHTTPS           = []byte("https")
	vHTTP11          = []byte("HTTP/1.1")
	vUpgrade         = []byte("Upgrade")
)

// forward proxies the request to one of a's upstreams, and to a second one
// when the first could not be connected to and the request can be sent
// again (it has no body, or a body of at most maxReplayBody).
func (p *Proxy) forward(ctx *fasthttp.RequestCtx, a *appState) {
	req := &ctx.Request
	ws, reqID := prepareRequest(ctx)
	if ws {
		p.proxyWebSocket(ctx, a)
		return
	}
	replayable, err := replayableBody(req)
	if err != nil {
		plainError(ctx, fasthttp.StatusBadRequest, "gateway: reading the request body: "+err.Error()+"\n")
		return
	}
	retrySafe := replayable && isIdempotent(req)
	var tried *upstream
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		u := a.pick(tried)
		if u == nil {
			break
		}
		err = p.roundTrip(ctx, u, a.timeout, retrySafe)
		if err == nil {
			u.succeeded()
			// The client learns the id too, unless the app answered with its own.
			if len(ctx.Response.Header.PeekBytes(hXRequestID)) == 0 {
				ctx.Response.Header.SetCanonical(hXRequestID, reqID)
			}
			return
		}
		lastErr, tried = err, u
		var ce *connectError
		if errors.As(err, &ce) {
			u.connectFailed(ce.err)
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

// readResponseHeader reads the upstream's response header, passing over
// informational (1xx) responses other than 101.
func readResponseHeader(resp *fasthttp.Response, br *bufio.Reader) error {
	for range 100 {
		if err := readHeader(resp, br); err != nil {
			return err
		}
		if c := resp.StatusCode(); c >= 200 || c < 100 || c == fasthttp.StatusSwitchingProtocols {
			return nil
		}
	}
	return errors.New("upstream sent too many informational responses")
}

// readHeader reads one response header. fasthttp wants a header block to
// end with CRLF CRLF; one whose lines all end with a bare LF (as CGI scripts
// often write them, RFC 9112 2.2 lets a recipient accept it, and curl and
// browsers do) is read with its line ends made CRLF.
func readHeader(resp *fasthttp.Response, br *bufio.Reader) error {
	if _, err := br.Peek(1); err == nil {
		if n := bareLFHeader(br); n > 0 {
			return readBareLFHeader(resp, br, n)
		}
	}
	err := resp.Header.Read(br)
	if err != nil && err != io.EOF && !isTimeout(err) {
		// The header may have come in parts, the end with the last.
		if n := bareLFHeader(br); n > 0 {
			return readBareLFHeader(resp, br, n)
		}
	}
	return err
}

var (
	crlfcrlf = []byte("\r\n\r\n")
	lflf     = []byte("\n\n")
)

// bareLFHeader returns the length of the header block buffered in br if it
// ends with a bare LF blank line, else 0.
func bareLFHeader(br *bufio.Reader) int {
	b, _ := br.Peek(br.Buffered())
	if i := bytes.Index(b, crlfcrlf); i >= 0 {
		b = b[:i]
	}
	if i := bytes.Index(b, lflf); i >= 0 {
		return i + 2
	}
	return 0
}

// readBareLFHeader parses the first n buffered bytes of br, a header with
// bare LF line ends, and consumes them.
func readBareLFHeader(resp *fasthttp.Response, br *bufio.Reader, n int) error {
	b, _ := br.Peek(n)
	fixed := make([]byte, 0, n+n/8+2)
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			fixed = append(fixed, '\r')
		}
		fixed = append(fixed, c)
	}
	if err := resp.Header.Read(bufio.NewReader(bytes.NewReader(fixed))); err != nil {
		return err
	}
	_, err := br.Discard(n)
	return err
}

func isEventStream(resp *fasthttp.Response) bool {
	return bytes.HasPrefix(resp.Header.ContentType(), []byte("text/event-stream"))
}

// bodyStream is a response body read from an upstream as the client's
// connection takes it. Reads pass the upstream's errors on, so that a
// broken upstream breaks the client's response (no terminating chunk)
// rather than ending it as if complete.
type bodyStream struct {
	p       *Proxy
	u       *upstream
	body    io.Reader
	conn    net.Conn
	keep    bool
	eof     bool
	aborted atomic.Bool
	uresp   *fasthttp.Response
	release func(reuse bool)
	once    sync.Once
}

func (s *bodyStream) Read(b []byte) (int, error) {
	n, err := s.body.Read(b)
	if err == io.EOF {
		s.eof = true
	} else if err != nil {
		err = fmt.Errorf("upstream %s: %w", s.u.addr, err)
	}
	return n, err
}

// Close is called by the server once the body is sent (or sending failed).
func (s *bodyStream) Close() error {
	s.once.Do(func() {
		s.p.untrack(s)
		s.release(s.eof && s.keep && !s.aborted.Load())
		s.u.inflight.Add(-1)
	})
	return nil
}

// aborter is a long-lived transfer that Shutdown ends.
type aborter interface{ abort() }

// abort makes the pending read fail; the server then calls Close.
func (s *bodyStream) abort() {
	s.aborted.Store(true)
	_ = s.conn.Close()
}

func (t *tunnel) abort() { _ = t.Close() }

func (p *Proxy) track(s *bodyStream) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		_ = s.conn.Close()
	default:
		p.live[s] = struct{}{}
	}
}

func (p *Proxy) untrack(c aborter) {
	p.mu.Lock()
	delete(p.live, c)
	p.mu.Unlock()
}

// prepareRequest readies the request for the upstream: forwarding headers
// set, hop-by-hop headers dropped (but for a WebSocket upgrade's), the
// protocol HTTP/1.1 so that the upstream connection is kept alive. It
// reports whether the request is a WebSocket upgrade, and the request id.
func prepareRequest(ctx *fasthttp.RequestCtx) (websocket bool, reqID []byte) {
	req := &ctx.Request
	h := &req.Header
	flags := scanHeaders(h.RawHeaders())

	if flags&fUpgrade != 0 && h.ConnectionUpgrade() && bytes.EqualFold(h.PeekBytes(hUpgrade), []byte("websocket")) {
		websocket = true
	}
	if flags&(fConnection|fHop) != 0 {
		dropHopHeaders(h, websocket)
	}
	if websocket {
		h.SetCanonical(hConnection, vUpgrade)
	}
	if !h.IsHTTP11() {
		h.SetProtocolBytes(vHTTP11)
	}
	req.UseHostHeader = true                // the Host as the client sent it
	req.URI().DisablePathNormalizing = true // the path as the client sent it

	var buf [128]byte
	xff := appendClientIP(buf[:0], ctx)
	if flags&fXFF != 0 {
		// The client's list (from all its X-Forwarded-For lines), then its
		// address.
		var v []byte
		for _, prior := range h.PeekAll(string(hXForwardedFor)) {
			if prior = bytes.TrimSpace(prior); len(prior) > 0 {
				v = append(append(v, prior...), ", "...)
			}
		}
		xff = append(v, xff...)
		h.DelBytes(hXForwardedFor)
	}
	h.SetCanonical(hXForwardedFor, xff)
	if ctx.IsTLS() {
		h.SetCanonical(hXForwardedProto, vHTTPS)
	} else {
		h.SetCanonical(hXForwardedProto, vHTTP)
	}
	h.SetCanonical(hXForwardedHost, h.Host())
	if flags&fRequestID != 0 {
		reqID = h.PeekBytes(hXRequestID)
	}
	if len(reqID) == 0 {
		var id [32]byte
		h.SetCanonical(hXRequestID, newRequestID(&id))
		reqID = h.PeekBytes(hXRequestID)
	}
	return websocket, reqID
}

// Header classes found by scanHeaders.
const (
	fConnection = 1 << iota // Connection
	fHop                    // another hop-by-hop header: Keep-Alive, Proxy-*, TE, Trailer, Upgrade; or Expect
	fUpgrade                // Upgrade
	fXFF                    // X-Forwarded-For
	fRequestID              // X-Request-Id
)

// scanHeaders classifies the header names of a raw header block, so that
// the common request (none of them) costs one pass and no lookups.
func scanHeaders(raw []byte) (flags uint8) {
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			raw = nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || line[0] == ' ' || line[0] == '\t' {
			continue
		}
		flags |= classify(line[:colon])
	}
	return flags
}

func classify(k []byte) uint8 {
	switch len(k) {
	case 2:
		if bytes.EqualFold(k, []byte("te")) {
			return fHop
		}
	case 6:
		if bytes.EqualFold(k, []byte("expect")) {
			return fHop
		}
	case 7:
		if bytes.EqualFold(k, []byte("trailer")) {
			return fHop
		}
		if bytes.EqualFold(k, []byte("upgrade")) {
			return fHop | fUpgrade
		}
	case 10:
		if bytes.EqualFold(k, []byte("connection")) {
			return fConnection
		}
		if bytes.EqualFold(k, []byte("keep-alive")) {
			return fHop
		}
	case 12:
		if bytes.EqualFold(k, []byte("x-request-id")) {
			return fRequestID
		}
	case 15:
		if bytes.EqualFold(k, []byte("x-forwarded-for")) {
			return fXFF
		}
	}
	if len(k) > 6 && bytes.EqualFold(k[:6], []byte("proxy-")) {
		return fHop
	}
	return 0
}

// dropHopHeaders removes the hop-by-hop headers of a request: those named
// by Connection, Connection itself, Keep-Alive, Proxy-*, TE, Trailer and
// Upgrade (kept, with Connection, for a WebSocket upgrade), and Expect (the
// gateway has answered it).
func dropHopHeaders(h *fasthttp.RequestHeader, websocket bool) {
	var fields []field
	raw := h.RawHeaders()
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			raw = nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || line[0] == ' ' || line[0] == '\t' {
			continue
		}
		fields = append(fields, field{line[:colon], bytes.TrimSpace(line[colon+1:])})
	}
	removeFields(h, fields, hopDropper(fields, websocket), isSpecialRequestHeader)
	if !websocket {
		h.DelBytes(hConnection) // also clears "close": the upstream connection is kept alive
	}
}

// field is a header field.
type field struct{ k, v []byte }

// hopDropper says which of fields are hop-by-hop.
func hopDropper(fields []field, websocket bool) func(k []byte) bool {
	var named [][]byte // by Connection
	for _, f := range fields {
		if classify(f.k)&fConnection != 0 {
			for _, tok := range tokens(f.v) {
				if !isHopKeep(tok, websocket) {
					named = append(named, tok)
				}
			}
		}
	}
	return func(k []byte) bool {
		switch c := classify(k); {
		case c&fConnection != 0:
			return !websocket
		case c&fUpgrade != 0:
			return !websocket
		case c&fHop != 0:
			return true
		}
		for _, n := range named {
			if bytes.EqualFold(k, n) {
				return true
			}
		}
		return false
	}
}

// headerEditor is what removeFields needs of a request or response header.
type headerEditor interface {
	DelBytes(key []byte)
	AddBytesKV(key, value []byte)
}

// removeFields deletes from h the fields (h's in their order) that drop
// selects. fasthttp deletes a field by moving the last one into its place;
// the order of fields of the same name matters, so when a name repeats, the
// other fields (but those fasthttp keeps apart, special) are taken out and
// added back in their order. The values of fields must not alias h's.
func removeFields(h headerEditor, fields []field, drop func(k []byte) bool, special func(k []byte) bool) {
	dropAny, repeated := false, false
	for i, f := range fields {
		dropAny = dropAny || drop(f.k)
		for _, g := range fields[:i] {
			repeated = repeated || bytes.EqualFold(f.k, g.k)
		}
	}
	if !dropAny {
		return
	}
	var kept []field
	for _, f := range fields {
		switch {
		case drop(f.k):
			h.DelBytes(f.k)
		case repeated && !special(f.k):
			kept = append(kept, f)
		}
	}
	for _, f := range kept {
		h.DelBytes(f.k)
	}
	for _, f := range kept {
		h.AddBytesKV(f.k, f.v)
	}
}

// isSpecialRequestHeader: fasthttp keeps these apart from the other fields.
func isSpecialRequestHeader(k []byte) bool {
	for _, s := range []string{"Host", "Content-Type", "Content-Length", "User-Agent", "Cookie", "Connection", "Transfer-Encoding", "Trailer"} {
		if len(k) == len(s) && bytes.EqualFold(k, []byte(s)) {
			return true
		}
	}
	return false
}

// isSpecialResponseHeader: fasthttp keeps these apart from the other fields.
func isSpecialResponseHeader(k []byte) bool {
	for _, s := range []string{"Content-Type", "Content-Length", "Content-Encoding", "Server", "Set-Cookie", "Connection", "Transfer-Encoding", "Trailer", "Date"} {
		if len(k) == len(s) && bytes.EqualFold(k, []byte(s)) {
			return true
		}
	}
	return false
}

// isHopKeep reports whether a token of Connection names something other
// than a header to drop.
func isHopKeep(tok []byte, websocket bool) bool {
	return bytes.EqualFold(tok, []byte("close")) || bytes.EqualFold(tok, []byte("keep-alive")) ||
		(websocket && bytes.EqualFold(tok, []byte("upgrade")))
}

// tokens splits a comma-separated header value.
func tokens(v []byte) [][]byte {
	var out [][]byte
	for len(v) > 0 {
		tok := v
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = v[:i], v[i+1:]
		} else {
			v = nil
		}
		if tok = bytes.TrimSpace(tok); len(tok) > 0 {
			out = append(out, tok)
		}
	}
	return out
}

// cleanResponseHeader removes the hop-by-hop headers of an upstream's
// response (those named by Connection, Connection, Keep-Alive, Proxy-*, TE,
// Trailer, Upgrade). The client connection's own keep-alive is the server's
// business, so the upstream's Connection: close does not end it.
func cleanResponseHeader(h *fasthttp.ResponseHeader) {
	h.ResetConnectionClose()
	if !bytes.Equal(h.Protocol(), vHTTP11) {
		h.SetProtocol(vHTTP11) // the gateway speaks HTTP/1.1 to its client, whatever the upstream's version
	}
	var flags uint8
	for k := range h.All() {
		flags |= classify(k)
	}
	if flags&(fConnection|fHop) == 0 {
		return
	}
	var fields []field
	for k, v := range h.All() {
		fields = append(fields, field{append([]byte(nil), k...), append([]byte(nil), v...)})
	}
	removeFields(h, fields, hopDropper(fields, false), isSpecialResponseHeader)
	h.DelBytes(hConnection)
}

// appendClientIP appends the client's IP address.
func appendClientIP(dst []byte, ctx *fasthttp.RequestCtx) []byte {
	sc, ok := ctx.Conn().(*srvConn)
	if ok && sc.ip != nil {
		return append(dst, sc.ip...)
	}
	n := len(dst)
	if a, isTCP := ctx.RemoteAddr().(*net.TCPAddr); isTCP {
		dst = a.AddrPort().Addr().Unmap().AppendTo(dst)
	} else {
		dst = append(dst, ctx.RemoteIP().String()...)
	}
	if ok {
		sc.ip = append([]byte(nil), dst[n:]...)
	}
	return dst
}

// newRequestID makes 32 random hex digits.
func newRequestID(id *[32]byte) []byte {
	const hexDigits = "0123456789abcdef"
	a, b := rand.Uint64(), rand.Uint64()
	for i := range 16 {
		id[i] = hexDigits[a&15]
		id[16+i] = hexDigits[b&15]
		a >>= 4
		b >>= 4
	}
	return id[:]
}

// replayableBody makes sure the request can be sent twice: a streamed
// body of at most maxReplayBody is read into memory. It reports false for
// a larger body, which stays streamed.
func replayableBody(req *fasthttp.Request) (bool, error) {
	if !req.IsBodyStream() {
		return true, nil
	}
	cl := req.Header.ContentLength()
	if cl > maxReplayBody {
		return false, nil
	}
	r := req.BodyStream()
	bp := replayBufs.Get().(*[]byte)
	defer replayBufs.Put(bp)
	buf := *bp
	if cl >= 0 {
		if _, err := io.ReadFull(r, buf[:cl]); err != nil {
			return false, err
		}
		req.SetBody(buf[:cl])
		return true, nil
	}
	// Chunked: read up to one byte more than the limit to know.
	n, err := io.ReadFull(r, buf[:maxReplayBody+1])
	switch {
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		req.SetBody(buf[:n])
		return true, nil
	case err != nil:
		return false, err
	}
	prefix := append([]byte(nil), buf[:n]...)
	req.SetBodyStream(io.MultiReader(bytes.NewReader(prefix), r), -1)
	return false, nil
}

var replayBufs = sync.Pool{New: func() any {
	b := make([]byte, maxReplayBody+1)
	return &b
}}

// proxyWebSocket forwards a WebSocket upgrade: it connects to an upstream
// (to another one if that fails), sends the upgrade request and, when the
// upstream switches protocols, hands the client's connection over and
// copies bytes both ways until either side closes. Any other answer is
// passed on as a plain response.
func (p *Proxy) proxyWebSocket(ctx *fasthttp.RequestCtx, a *appState) {
	dialTimeout := connectTimeout
	if a.timeout > 0 && a.timeout < dialTimeout {
		dialTimeout = a.timeout
	}
	var tried *upstream
	var lastErr error
	for range 2 {
		u := a.pick(tried)
		if u == nil {
			break
		}
		tried = u
		conn, err := p.dial(u.addr, dialTimeout)
		if err != nil {
			lastErr = &connectError{addr: u.addr, err: err}
			u.connectFailed(err)
			continue
		}
		u.succeeded()
		if err := p.upgrade(ctx, a, u, conn); err != nil {
			_ = conn.Close()
			lastErr = err
		} else {
			return
		}
		break
	}
	if lastErr == nil {
		plainError(ctx, fasthttp.StatusServiceUnavailable, "app "+a.name+" has no healthy instance\n")
	} else if isTimeout(lastErr) {
		plainError(ctx, fasthttp.StatusGatewayTimeout, "app "+a.name+": upstream timed out\n")
	} else {
		plainError(ctx, fasthttp.StatusBadGateway, "app "+a.name+": "+lastErr.Error()+"\n")
	}
}

// upgrade sends the upgrade request on conn and answers the client; it
// owns conn unless it returns an error.
func (p *Proxy) upgrade(ctx *fasthttp.RequestCtx, a *appState, u *upstream, conn net.Conn) error {
	if a.timeout > 0 {
		_ = conn.SetDeadline(time.Now().Add(a.timeout))
	}
	bw := bufio.NewWriter(conn)
	if err := ctx.Request.Write(bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	br := bufio.NewReader(conn)
	uresp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseResponse(uresp)
	if err := readResponseHeader(uresp, br); err != nil {
		return err
	}
	if uresp.StatusCode() != fasthttp.StatusSwitchingProtocols {
		// Refused: pass the answer on.
		if err := uresp.ReadBody(br, maxBufferedBody); err != nil {
			return err
		}
		_ = conn.Close()
		uresp.CopyTo(&ctx.Response)
		cleanResponseHeader(&ctx.Response.Header)
		return nil
	}
	_ = conn.SetDeadline(time.Time{})
	head := uresp.Header.AppendBytes(nil)
	u.inflight.Add(1)
	t := &tunnel{up: conn}
	p.mu.Lock()
	select {
	case <-p.done:
		p.mu.Unlock()
		u.inflight.Add(-1)
		_ = conn.Close()
		plainError(ctx, fasthttp.StatusServiceUnavailable, "gateway: shutting down\n")
		return nil
	default:
		p.live[t] = struct{}{}
	}
	p.mu.Unlock()
	ctx.Response.SetStatusCode(fasthttp.StatusSwitchingProtocols) // for the metrics: the hijack handler answers
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(client net.Conn) {
		defer u.inflight.Add(-1)
		defer p.untrack(t)
		t.setClient(client)
		defer t.Close()
		if _, err := client.Write(head); err != nil {
			return
		}
		done := make(chan struct{})
		go func() {
			_, _ = io.Copy(conn, client) // client -> upstream
			closeWrite(conn)
			close(done)
		}()
		_, _ = io.Copy(client, br) // upstream -> client, starting with what br holds
		closeWrite(client)
		select {
		case <-done:
		case <-time.After(5 * time.Second): // the client did not close its side
		}
	})
	return nil
}

// tunnel is a hijacked WebSocket connection pair.
type tunnel struct {
	mu     sync.Mutex
	up     net.Conn
	client net.Conn
	closed bool
}

func (t *tunnel) setClient(c net.Conn) {
	t.mu.Lock()
	t.client = c
	closed := t.closed
	t.mu.Unlock()
	if closed {
		_ = c.Close()
	}
}

func (t *tunnel) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	_ = t.up.Close()
	if t.client != nil {
		_ = t.client.Close()
	}
	return nil
}

// closeWrite half-closes c when it can, so that the other side sees the end
// of the stream while its own direction goes on.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

// srvConn is a client connection with cheap read deadlines. fasthttp sets
// one twice per request: the idle timeout before it waits for the next
// request, and none once the request's first byte is in. Each is timer work
// in the runtime, microseconds per request at high rates. srvConn keeps the
// deadline it has while that is at most idleSlack earlier than the one
// asked for, and keeps it over the clearing: the rest of a request (its
// header, the first bytes of its body) comes well within it, and a long
// read (a streamed request body) clears it for real first (see
// clearReadDeadline). It also keeps the client's address formatted for
// X-Forwarded-For.
type srvConn struct {
	net.Conn
	rdl int64  // read deadline set on the connection, unix nanos; 0: none
	ip  []byte // client IP, formatted once
}

func (c *srvConn) SetReadDeadline(t time.Time) error {
	if t.IsZero() {
		return nil
	}
	want := t.UnixNano()
	if c.rdl != 0 && c.rdl <= want && c.rdl >= want-int64(idleSlack) {
		return nil
	}
	c.rdl = want
	return c.Conn.SetReadDeadline(t)
}

func (c *srvConn) SetDeadline(t time.Time) error {
	c.rdl = 0
	if !t.IsZero() {
		c.rdl = t.UnixNano()
	}
	return c.Conn.SetDeadline(t)
}

// clearReadDeadline removes the read deadline of a client connection before
// a read that may take long.
func clearReadDeadline(c net.Conn) {
	if sc, ok := c.(*srvConn); ok && sc.rdl != 0 {
		sc.rdl = 0
		_ = sc.Conn.SetReadDeadline(time.Time{})
	}
}

// srvListener makes the accepted TCP connections srvConns, each with the
// idle timeout for its first request.
type srvListener struct{ net.Listener }

func (l srvListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	sc := &srvConn{Conn: tc}
	_ = sc.SetReadDeadline(time.Now().Add(idleTimeout))
	return sc, nil
}

// upConn is a connection to an upstream that keeps the deadline it has,
// like srvConn: a request's deadline is set only when the connection's is
// later than the request's or more than an eighth of the timeout earlier;
// so a request times out between 7/8 of its route's timeout and the
// timeout.
type upConn struct {
	net.Conn
	dl int64 // read and write deadline, unix nanos; 0: none; -1: not the same for both
}

// setDeadline gives conn the deadline of a request with timeout (none when
// timeout is 0).
func setDeadline(conn net.Conn, timeout time.Duration) error {
	uc, ok := conn.(*upConn)
	if timeout <= 0 {
		if ok && uc.dl == 0 {
			return nil
		}
		if ok {
			uc.dl = 0
		}
		return conn.SetDeadline(time.Time{})
	}
	t := time.Now().Add(timeout)
	want := t.UnixNano()
	if ok && uc.dl > 0 && uc.dl <= want && uc.dl >= want-int64(timeout/8) {
		return nil
	}
	if ok {
		uc.dl = want
	}
	return conn.SetDeadline(t)
}

// setReadDeadline sets the read deadline of conn alone.
func setReadDeadline(conn net.Conn, t time.Time) error {
	if uc, ok := conn.(*upConn); ok {
		uc.dl = -1
	}
	return conn.SetReadDeadline(t)
}

// CloseWrite half-closes the connection.
func (c *upConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// fasthttpLogger sends fasthttp's own messages to slog at debug level.
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Debug("gateway: " + fmt.Sprintf(format, args...))
}
