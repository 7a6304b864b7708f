package gateway

// Upstreams and balancing: least outstanding requests, passive health
// (an upstream that refuses connections is skipped for a while).

import (
	"net"
	"time"

	"github.com/valyala/fasthttp"
)

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
	if i := a.pickIndex(skip); i >= 0 {
		return a.ups[i]
	}
	return nil
}

// pickIndex is pick returning the upstream's index in a.ups, or -1.
func (a *appState) pickIndex(skip *upstream) int {
	n := len(a.ups)
	if n == 1 {
		if a.ups[0] != skip {
			return 0
		}
		return -1
	}
	if n == 0 {
		return -1
	}
	i := int(a.rr.Add(1) % uint32(n))
	best, down := -1, -1
	var bestLoad, downUntil, now int64
	for range n {
		j := i
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
				if down < 0 || d < downUntil {
					down, downUntil = j, d
				}
				continue
			}
		}
		if l := u.inflight.Load(); best < 0 || l < bestLoad {
			best, bestLoad = j, l
		}
	}
	if best < 0 {
		return down
	}
	return best
}
