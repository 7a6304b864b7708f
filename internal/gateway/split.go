package gateway

// Revisions and canary splits: a request goes to one revision of its app
// when it asks for it (X-Berth-Revision, or a host "rev-N.<host>"), or to
// a side of the app's Split, kept by a cookie; responses say which
// revision served them.

import (
	"bytes"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"
)

const (
	// revCookiePrefix + the app's name is the cookie keeping a client on
	// its side of a split.
	revCookiePrefix = "berth-rev-"
	revCookieAttrs  = "; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax"
	// maxWeight is the Weight sending every new client to the canary.
	maxWeight = 10000
)

// revState is one revision of an app in a routing.
type revState struct {
	rev   int64
	dec   []byte    // rev in decimal, the X-Berth-Revision of its answers
	view  *appState // the app with only this revision's upstreams
	stats *revCounters
}

// splitState is an app's Split, ready for requests.
type splitState struct {
	stable, canary *revState
	weight         int
	cookie         []byte // the cookie's name
	// The Set-Cookie values assigning a client to either side.
	setStable, setCanary []byte
}

// setRevisions gives a (being built by SetTable) the revisions and split of
// ar. Upstreams of a revision that ar.Upstreams lacks are added to a.ups,
// which stays the union.
func (p *Proxy) setRevisions(a *appState, ar *AppRoutes, get func(addr string) *upstream) {
	if len(ar.Revisions) == 0 && ar.Split == nil {
		return
	}
	revision := func(n int64) *revState {
		for _, rs := range a.revs {
			if rs.rev == n {
				return rs
			}
		}
		rs := &revState{rev: n, dec: strconv.AppendInt(nil, n, 10), stats: p.m.revTable.get(a.name, n)}
		rs.view = &appState{
			name:        a.name,
			wakeTimeout: a.wakeTimeout,
			timeout:     a.timeout,
			m:           a.m,
			rev:         rs,
		}
		a.revs = append(a.revs, rs)
		return rs
	}
	for _, r := range ar.Revisions {
		if r.Revision <= 0 {
			continue // not a revision a request could name
		}
		rs := revision(r.Revision)
		for _, addr := range r.Upstreams {
			if u := get(addr); u != nil {
				rs.view.ups = addUpstream(rs.view.ups, u)
				a.ups = addUpstream(a.ups, u)
			}
		}
	}
	if sp := ar.Split; sp != nil && sp.Stable > 0 && sp.Canary > 0 {
		s := &splitState{
			stable: revision(sp.Stable),
			canary: revision(sp.Canary),
			weight: max(0, min(sp.Weight, maxWeight)),
			cookie: []byte(revCookiePrefix + a.name),
		}
		s.setStable = []byte(string(s.cookie) + "=" + string(s.stable.dec) + revCookieAttrs)
		s.setCanary = []byte(string(s.cookie) + "=" + string(s.canary.dec) + revCookieAttrs)
		a.split = s
	}
	if len(a.revs) > 0 {
		a.revOf = make([]*revState, len(a.ups))
		for i, u := range a.ups {
		find:
			for _, rs := range a.revs {
				for _, v := range rs.view.ups {
					if v == u {
						a.revOf[i] = rs
						break find
					}
				}
			}
		}
	}
}

// revision returns a's revision n, or nil.
func (a *appState) revision(n int64) *revState {
	for _, rs := range a.revs {
		if rs.rev == n {
			return rs
		}
	}
	return nil
}

// serve sends a request for a (which has upstreams) on: to revision direct
// when it is not 0, else to a side of a's split if it has one, else to any
// of a's upstreams; and counts it. start is when the request began, for
// the revision's latency.
func (p *Proxy) serve(ctx *fasthttp.RequestCtx, a *appState, direct int64, start time.Time) {
	view := a
	var setCookie []byte
	switch {
	case direct != 0:
		rs := a.revision(direct)
		if rs == nil || len(rs.view.ups) == 0 {
			var buf [20]byte
			dec := strconv.AppendInt(buf[:0], direct, 10)
			plainError(ctx, fasthttp.StatusServiceUnavailable, "app "+a.name+" has no healthy instance of revision "+string(dec)+"\n")
			ctx.Response.Header.SetCanonical(hXBerthRevision, dec)
			now := time.Now()
			a.m.observe(fasthttp.StatusServiceUnavailable, now.Sub(ctx.Time()))
			if rs != nil { // a revision of the table: counted (others are whatever clients send)
				rs.stats.observe(fasthttp.StatusServiceUnavailable, now.Sub(start))
			}
			return
		}
		view = rs.view
	case a.split != nil:
		if v, set := a.split.choose(&ctx.Request.Header); v != nil {
			view, setCookie = v, set
		}
	}
	if view.rev != nil || setCookie != nil {
		if ctx.Request.Header.ConnectionUpgrade() {
			// A WebSocket's 101 is written by the tunnel from the
			// upstream's header (websocket.go): it adds these.
			ctx.SetUserValue(upgradeExtraKey, upgradeExtra{rev: view.rev, setCookie: setCookie})
		}
	}
	rs := p.forward(ctx, view)
	h := &ctx.Response.Header
	if rs != nil {
		h.SetCanonical(hXBerthRevision, rs.dec)
	}
	if setCookie != nil {
		h.AddBytesKV(hSetCookie, setCookie)
	}
	code := ctx.Response.StatusCode()
	now := time.Now()
	a.m.observe(code, now.Sub(ctx.Time()))
	if rs != nil {
		rs.stats.observe(code, now.Sub(start))
	}
}

// choose returns the view of the side a request goes to, and the
// Set-Cookie value to answer with when the client was assigned to it just
// now. A client whose cookie names a side keeps it; any other gets the
// canary with probability weight/10000. When the side has no upstream the
// other serves (without assigning the client to it); when neither has,
// choose returns nil: any upstream of the app serves.
func (s *splitState) choose(h *fasthttp.RequestHeader) (*appState, []byte) {
	side := s.fromCookie(h)
	var set []byte
	if side == nil {
		side, set = s.stable, s.setStable
		if s.weight >= maxWeight || (s.weight > 0 && rand.IntN(maxWeight) < s.weight) {
			side, set = s.canary, s.setCanary
		}
	}
	if len(side.view.ups) > 0 {
		return side.view, set
	}
	other := s.canary
	if side == s.canary {
		other = s.stable
	}
	if len(other.view.ups) > 0 {
		return other.view, nil
	}
	return nil, nil
}

// fromCookie returns the side the request's cookie names, or nil.
func (s *splitState) fromCookie(h *fasthttp.RequestHeader) *revState {
	for _, line := range h.PeekAll(fasthttp.HeaderCookie) {
		for len(line) > 0 {
			i := bytes.Index(line, s.cookie)
			if i < 0 {
				break
			}
			// A match must start a cookie ("name=" after "; " or at the start).
			start := i == 0 || line[i-1] == ' ' || line[i-1] == ';' || line[i-1] == '\t'
			line = line[i+len(s.cookie):]
			if !start {
				continue
			}
			v := bytes.TrimLeft(line, " \t")
			if len(v) == 0 || v[0] != '=' {
				continue
			}
			v = v[1:]
			if j := bytes.IndexByte(v, ';'); j >= 0 {
				v = v[:j]
			}
			v = bytes.TrimSpace(v)
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			if n, ok := parseRevision(v); ok {
				switch n {
				case s.stable.rev:
					return s.stable
				case s.canary.rev:
					return s.canary
				}
			}
		}
	}
	return nil
}

// upgradeExtra is what a WebSocket's 101 answer carries besides the
// upstream's header: the revision that serves it, and a new client's
// cookie.
type upgradeExtra struct {
	rev       *revState
	setCookie []byte
}

type upgradeExtraKeyType struct{}

var upgradeExtraKey upgradeExtraKeyType

// addUpgradeExtra puts the request's upgradeExtra, if any, into the
// upstream's 101 header h.
func addUpgradeExtra(ctx *fasthttp.RequestCtx, h *fasthttp.ResponseHeader) {
	x, ok := ctx.UserValue(upgradeExtraKey).(upgradeExtra)
	if !ok {
		return
	}
	if x.rev != nil {
		h.SetCanonical(hXBerthRevision, x.rev.dec)
	}
	if x.setCookie != nil {
		h.AddBytesKV(hSetCookie, x.setCookie)
	}
}
