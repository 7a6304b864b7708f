package gateway

// WebSocket upgrades: the client's connection is handed over and bytes
// are copied both ways through a tunnel.

import (
	"bufio"
	"io"
	"net"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

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
	addUpgradeExtra(ctx, &uresp.Header)
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
