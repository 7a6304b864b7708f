package gateway

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// splitApp is an app "app" at app.test with revision 1 ("stable", one
// upstream answering "s") and revision 2 ("canary", one answering "c").
type splitApp struct {
	s, c       *named
	sAddr, cAd string
}

func newSplitApp(t *testing.T) *splitApp {
	a := &splitApp{s: &named{name: "s"}, c: &named{name: "c"}}
	a.sAddr = serveUp(t, a.s.ServeHTTP)
	a.cAd = serveUp(t, a.c.ServeHTTP)
	return a
}

func (a *splitApp) routes(split *Split) AppRoutes {
	return AppRoutes{
		App:       "app",
		Hosts:     []string{"app.test", "*.wild.test"},
		Upstreams: []string{a.sAddr, a.cAd},
		Revisions: []RevisionRoutes{{Revision: 1, Upstreams: []string{a.sAddr}}, {Revision: 2, Upstreams: []string{a.cAd}}},
		Split:     split,
	}
}

// side is the revision a body names.
func side(body string) string {
	switch body {
	case "s":
		return "1"
	case "c":
		return "2"
	}
	return "?" + body
}

const cookieAttrs = "; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax"

// checkAnswer checks a 200 from either side: its X-Berth-Revision, and its
// Set-Cookie (wantCookie: one naming the side that answered; else none).
func checkAnswer(t *testing.T, resp *http.Response, body string, wantCookie bool) {
	t.Helper()
	rev := side(body)
	if resp.StatusCode != 200 || resp.Header.Get("X-Berth-Revision") != rev {
		t.Fatalf("%d %q X-Berth-Revision %q", resp.StatusCode, body, resp.Header.Get("X-Berth-Revision"))
	}
	got := resp.Header.Values("Set-Cookie")
	switch {
	case wantCookie && (len(got) != 1 || got[0] != "berth-rev-app="+rev+cookieAttrs):
		t.Fatalf("answer of revision %s: Set-Cookie %q", rev, got)
	case !wantCookie && len(got) != 0:
		t.Fatalf("answer of revision %s: unexpected Set-Cookie %q", rev, got)
	}
}

func TestSplitWeightShare(t *testing.T) {
	a := newSplitApp(t)
	p, addr := startProxy(t, nil)
	p.SetTable(NewTable([]AppRoutes{a.routes(&Split{Stable: 1, Canary: 2, Weight: 2000})}))
	// Cookie-less clients each get a new draw. With n = 2000 at p = 0.2 the
	// canary share has a standard deviation of sqrt(0.2*0.8/2000) = 0.9%:
	// ±4% is over 4 sd, a false failure about once in 100,000 runs.
	const n = 2000
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n / 8 {
				resp, body := get(t, addr, "app.test")
				checkAnswer(t, resp, body, true)
			}
		}()
	}
	wg.Wait()
	s, c := a.s.n.Load(), a.c.n.Load()
	if s+c != n {
		t.Fatalf("stable %d + canary %d != %d", s, c, n)
	}
	if share := float64(c) / n; share < 0.16 || share > 0.24 {
		t.Fatalf("canary got %.1f%% of %d new clients, want 20%% ± 4%%", 100*share, n)
	}
	t.Logf("canary share %.2f%%", 100*float64(c)/n)
}

func TestSplitClientsKeepTheirSide(t *testing.T) {
	a := newSplitApp(t)
	p, addr := startProxy(t, nil)
	p.SetTable(NewTable([]AppRoutes{a.routes(&Split{Stable: 1, Canary: 2, Weight: 3000})}))
	const clients, each = 100, 10
	var canaries atomic.Int64
	var wg sync.WaitGroup
	work := make(chan int, clients)
	for i := range clients {
		work <- i
	}
	close(work)
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				jar, _ := cookiejar.New(nil)
				c := &http.Client{Transport: httpc.Transport, Jar: jar, Timeout: 10 * time.Second}
				first := ""
				for i := range each {
					req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
					req.Host = "app.test"
					resp, err := c.Do(req)
					if err != nil {
						t.Error(err)
						return
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					body := string(b)
					checkAnswer(t, resp, body, i == 0) // assigned on the first request only
					if i == 0 {
						first = body
						if body == "c" {
							canaries.Add(1)
						}
					} else if body != first {
						t.Errorf("client moved from %s to %s on request %d", first, body, i)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	// 100 clients at 30%: sd 4.6 clients; 30 ± 15 is over 3 sd.
	if n := canaries.Load(); n < 15 || n > 45 {
		t.Errorf("%d of %d clients on the canary, want about 30", n, clients)
	}
}

func TestSplitCookies(t *testing.T) {
	a := newSplitApp(t)
	p, addr := startProxy(t, nil)
	p.SetTable(NewTable([]AppRoutes{a.routes(&Split{Stable: 1, Canary: 2, Weight: 0})}))
	for _, c := range []struct {
		cookie, want string
		set          bool
	}{
		{"berth-rev-app=2", "c", false}, // weight 0, but the client is on the canary already
		{"a=b; berth-rev-app=2; c=d", "c", false},
		{`berth-rev-app="2"`, "c", false},
		{"berth-rev-app=1", "s", false},
		{"berth-rev-app=7", "s", true}, // not a side of the split: reassigned
		{"berth-rev-app=abc", "s", true},
		{"berth-rev-app=", "s", true},
		{"xberth-rev-app=2", "s", true}, // another cookie
		{"berth-rev-apple=2", "s", true},
		{"berth-rev-other=2", "s", true},
		{"berth-rev-app=9; berth-rev-app=2", "c", false}, // the one naming a side counts
	} {
		resp, body := do(t, "GET", addr, "app.test", nil, "Cookie", c.cookie)
		if body != c.want {
			t.Errorf("Cookie %q: went to %q, want %q", c.cookie, body, c.want)
			continue
		}
		checkAnswer(t, resp, body, c.set)
	}
	// Two Cookie lines.
	resp, body := do(t, "GET", addr, "app.test", nil, "Cookie", "a=b", "Cookie", "berth-rev-app=2")
	if body != "c" {
		t.Errorf("second Cookie line: went to %q", body)
	}
	checkAnswer(t, resp, body, false)
	// Without a split, the cookie means nothing.
	p.SetTable(NewTable([]AppRoutes{a.routes(nil)}))
	for range 4 {
		resp, body := do(t, "GET", addr, "app.test", nil, "Cookie", "berth-rev-app=2")
		checkAnswer(t, resp, body, false)
	}
	if a.s.n.Load() == 0 {
		t.Error("without a split, a cookie still picked the side")
	}
}

func TestSplitWeightExtremes(t *testing.T) {
	for _, c := range []struct {
		weight int
		want   string
	}{{0, "s"}, {10000, "c"}, {-5, "s"}, {20000, "c"}} {
		a := newSplitApp(t)
		p, addr := startProxy(t, nil)
		p.SetTable(NewTable([]AppRoutes{a.routes(&Split{Stable: 1, Canary: 2, Weight: c.weight})}))
		for range 50 {
			resp, body := get(t, addr, "app.test")
			if body != c.want {
				t.Fatalf("weight %d: went to %q, want %q", c.weight, body, c.want)
			}
			checkAnswer(t, resp, body, true)
		}
	}
}

func TestDirectRevision(t *testing.T) {
	a := newSplitApp(t)
	other := &named{name: "other"}
	p, addr := startProxy(t, nil)
	routes := a.routes(&Split{Stable: 1, Canary: 2, Weight: 0})
	routes.Revisions = append(routes.Revisions, RevisionRoutes{Revision: 3}) // listed, no upstream
	p.SetTable(NewTable([]AppRoutes{
		routes,
		{App: "other", Hosts: []string{"rev-1.app.test"}, Upstreams: []string{serveUp(t, other.ServeHTTP)}},
	}))
	for _, c := range []struct {
		host, cookie, hdr string
		code              int
		want              string
	}{
		{host: "app.test", hdr: "2", code: 200, want: "c"},
		{host: "app.test", hdr: "1", code: 200, want: "s"},
		{host: "app.test", hdr: "2", cookie: "berth-rev-app=1", code: 200, want: "c"}, // the header beats the cookie
		{host: "rev-2.app.test", code: 200, want: "c"},
		{host: "REV-2.App.Test:8080", code: 200, want: "c"},
		{host: "rev-2.app.test.", code: 200, want: "c"},
		{host: "rev-2.x.wild.test", code: 200, want: "c"},  // the rest found by wildcard
		{host: "rev-1.app.test", code: 200, want: "other"}, // an exact host beats the prefix
		{host: "rev-1.app.test", hdr: "2", code: 503},      // ... and the header then applies to that app
		{host: "rev-2.app.test", hdr: "1", code: 200, want: "s"},
		{host: "rev-9.app.test", code: 503, want: "app app has no healthy instance of revision 9\n"},
		{host: "app.test", hdr: "9", code: 503, want: "app app has no healthy instance of revision 9\n"},
		{host: "app.test", hdr: "3", code: 503, want: "app app has no healthy instance of revision 3\n"},
		{host: "rev-2.nope.test", code: 404},
		{host: "rev-0.app.test", code: 404},
		{host: "rev-x.app.test", code: 404},
		{host: "rev-2.y.wild.test", hdr: "1", code: 200, want: "s"},
		{host: "rev-99999999999999999999.x.wild.test", code: 200, want: "s"}, // not a revision: the wildcard's, weight 0
	} {
		var hdr []string
		if c.hdr != "" {
			hdr = append(hdr, "X-Berth-Revision", c.hdr)
		}
		if c.cookie != "" {
			hdr = append(hdr, "Cookie", c.cookie)
		}
		resp, body := do(t, "GET", addr, c.host, nil, hdr...)
		name := fmt.Sprintf("%s %s %s", c.host, c.hdr, c.cookie)
		if resp.StatusCode != c.code || (c.want != "" && body != c.want) {
			t.Errorf("%s: %d %q, want %d %q", name, resp.StatusCode, body, c.code, c.want)
			continue
		}
		direct := c.hdr != "" || (strings.HasPrefix(strings.ToLower(c.host), "rev-") && c.want != "other" && !strings.Contains(c.host, "9999"))
		if direct && c.code != 404 && len(resp.Header.Values("Set-Cookie")) != 0 {
			t.Errorf("%s: direct request got Set-Cookie %q", name, resp.Header.Values("Set-Cookie"))
		}
		if c.code == 503 && c.want != "" {
			if rev := strings.TrimSuffix(c.want[strings.LastIndexByte(c.want, ' ')+1:], "\n"); resp.Header.Get("X-Berth-Revision") != rev {
				t.Errorf("%s: X-Berth-Revision %q, want %q", name, resp.Header.Get("X-Berth-Revision"), rev)
			}
		}
		if c.code == 200 && c.want != "other" && resp.Header.Get("X-Berth-Revision") != side(body) {
			t.Errorf("%s: X-Berth-Revision %q from %q", name, resp.Header.Get("X-Berth-Revision"), body)
		}
	}
	for _, bad := range []string{"abc", "0", "-1", "+2", "2.0", "1e3", "99999999999999999999", "0x2"} {
		resp, body := do(t, "GET", addr, "app.test", nil, "X-Berth-Revision", bad)
		if resp.StatusCode != 400 || body != "gateway: X-Berth-Revision: want a revision number\n" {
			t.Errorf("X-Berth-Revision %q: %d %q, want 400", bad, resp.StatusCode, body)
		}
	}
	// Direct requests to an app without a split.
	p.SetTable(NewTable([]AppRoutes{a.routes(nil)}))
	for range 5 {
		if resp, body := do(t, "GET", addr, "rev-2.app.test", nil); body != "c" || resp.Header.Get("X-Berth-Revision") != "2" {
			t.Fatalf("direct without split: %d %q", resp.StatusCode, body)
		}
	}
}

func TestRevisionHeader(t *testing.T) {
	a := newSplitApp(t)
	plain := &named{name: "plain"}
	own := serveUp(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Berth-Revision", "77") // what the app says is not what served it
		fmt.Fprint(w, "s")
	})
	p, addr := startProxy(t, nil)
	p.SetTable(NewTable([]AppRoutes{
		a.routes(nil),
		{App: "plain", Hosts: []string{"plain.test"}, Upstreams: []string{serveUp(t, plain.ServeHTTP)}},
		{App: "own", Hosts: []string{"own.test"}, Upstreams: []string{own}, Revisions: []RevisionRoutes{{Revision: 1, Upstreams: []string{own}}}},
	}))
	seen := map[string]int{}
	for range 20 {
		resp, body := get(t, addr, "app.test")
		checkAnswer(t, resp, body, false)
		seen[body]++
	}
	if seen["s"] != 10 || seen["c"] != 10 {
		t.Errorf("no split: %v, want both revisions in turn", seen)
	}
	if resp, _ := get(t, addr, "plain.test"); resp.Header.Get("X-Berth-Revision") != "" {
		t.Errorf("app without revisions: X-Berth-Revision %q", resp.Header.Get("X-Berth-Revision"))
	}
	if resp, _ := get(t, addr, "own.test"); resp.Header.Values("X-Berth-Revision")[0] != "1" || len(resp.Header.Values("X-Berth-Revision")) != 1 {
		t.Errorf("upstream's own X-Berth-Revision kept: %q", resp.Header.Values("X-Berth-Revision"))
	}
	// An upstream listed in a revision only is routed too (Upstreams is the union).
	r := a.routes(nil)
	r.Upstreams = nil
	p.SetTable(NewTable([]AppRoutes{r}))
	seen = map[string]int{}
	for range 4 {
		resp, body := get(t, addr, "app.test")
		checkAnswer(t, resp, body, false)
		seen[body]++
	}
	if seen["s"] != 2 || seen["c"] != 2 {
		t.Errorf("revisions without Upstreams: %v", seen)
	}
}

func TestSplitFallback(t *testing.T) {
	a := newSplitApp(t)
	old := &named{name: "old"}
	oldAddr := serveUp(t, old.ServeHTTP)
	p, addr := startProxy(t, nil)
	// The canary has no upstream (yet): everyone gets the stable side, and
	// nobody is assigned to it.
	r := a.routes(&Split{Stable: 1, Canary: 2, Weight: 10000})
	r.Upstreams = []string{a.sAddr}
	r.Revisions = r.Revisions[:1]
	p.SetTable(NewTable([]AppRoutes{r}))
	for _, cookie := range []string{"", "berth-rev-app=2", "berth-rev-app=1"} {
		resp, body := do(t, "GET", addr, "app.test", nil, "Cookie", cookie)
		if body != "s" {
			t.Fatalf("cookie %q: went to %q", cookie, body)
		}
		checkAnswer(t, resp, body, false)
	}
	// The stable side has none: the canary serves.
	r = a.routes(&Split{Stable: 1, Canary: 2, Weight: 0})
	r.Revisions[0].Upstreams = nil
	r.Upstreams = []string{a.cAd}
	p.SetTable(NewTable([]AppRoutes{r}))
	for _, cookie := range []string{"", "berth-rev-app=1"} {
		resp, body := do(t, "GET", addr, "app.test", nil, "Cookie", cookie)
		if body != "c" {
			t.Fatalf("cookie %q: went to %q", cookie, body)
		}
		checkAnswer(t, resp, body, false)
	}
	// Neither side has one: whatever the app runs serves.
	p.SetTable(NewTable([]AppRoutes{{App: "app", Hosts: []string{"app.test"}, Upstreams: []string{oldAddr},
		Revisions: []RevisionRoutes{{Revision: 5, Upstreams: []string{oldAddr}}}, Split: &Split{Stable: 1, Canary: 2, Weight: 5000}}}))
	resp, body := get(t, addr, "app.test")
	if resp.StatusCode != 200 || body != "old" || resp.Header.Get("X-Berth-Revision") != "5" || resp.Header.Get("Set-Cookie") != "" {
		t.Fatalf("neither side: %d %q %v", resp.StatusCode, body, resp.Header)
	}
}

func TestSplitRetriesOnItsSide(t *testing.T) {
	a := newSplitApp(t)
	dead := deadAddr(t)
	p, addr := startProxy(t, nil)
	counts := countDials(p)
	r := a.routes(&Split{Stable: 1, Canary: 2, Weight: 10000})
	r.Upstreams = append(r.Upstreams, dead)
	r.Revisions[1].Upstreams = []string{dead, a.cAd}
	p.SetTable(NewTable([]AppRoutes{r}))
	for i := range 20 {
		resp, body := get(t, addr, "app.test")
		if body != "c" {
			t.Fatalf("request %d: %d %q, want the canary's other upstream", i, resp.StatusCode, body)
		}
		checkAnswer(t, resp, body, true)
	}
	if n := dials(counts, dead); n != 1 {
		t.Fatalf("dead canary upstream dialed %d times, want 1", n)
	}
	st := findStats(t, p, "app", 2)
	if st.ConnectFailures != 1 || st.Requests != 20 || st.Errors != 0 {
		t.Fatalf("canary stats %+v", st)
	}
	if a.s.n.Load() != 0 {
		t.Fatal("a canary request was retried on the stable side")
	}
}

func findStats(t *testing.T, p *Proxy, app string, rev int64) RevisionStats {
	t.Helper()
	for _, s := range p.RevisionStats() {
		if s.App == app && s.Revision == rev {
			return s
		}
	}
	t.Fatalf("no stats for %s revision %d in %+v", app, rev, p.RevisionStats())
	return RevisionStats{}
}

func sum(b []int64) (n int64) {
	for _, v := range b {
		n += v
	}
	return n
}

func TestRevisionStats(t *testing.T) {
	ok := serveUp(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(120 * time.Millisecond)
		}
		fmt.Fprint(w, "ok")
	})
	five := serveUp(t, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "broken", 500) })
	dead := deadAddr(t)
	p, addr := startProxy(t, nil)
	counts := countDials(p)
	table := func(rev1 string) *Table {
		return NewTable([]AppRoutes{
			{App: "zed", Hosts: []string{"zed.test"}, Upstreams: []string{ok}, Revisions: []RevisionRoutes{{Revision: 4, Upstreams: []string{ok}}}},
			{App: "app", Hosts: []string{"app.test"}, Upstreams: []string{rev1, dead, five},
				Revisions: []RevisionRoutes{{Revision: 2, Upstreams: []string{dead, five}}, {Revision: 1, Upstreams: []string{rev1}}, {Revision: 3}},
				Split:     &Split{Stable: 1, Canary: 2, Weight: 0}},
		})
	}
	p.SetTable(table(ok))
	for range 5 {
		get(t, addr, "app.test") // stable
	}
	req, _ := http.NewRequest("GET", "http://"+addr+"/slow", nil)
	req.Host = "app.test"
	resp, err := httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for range 4 {
		if resp, _ := do(t, "GET", addr, "app.test", nil, "X-Berth-Revision", "2"); resp.StatusCode != 500 {
			t.Fatalf("canary: %d", resp.StatusCode)
		}
	}
	do(t, "GET", addr, "app.test", nil, "X-Berth-Revision", "3") // listed without upstreams: 503
	do(t, "GET", addr, "app.test", nil, "X-Berth-Revision", "8") // not listed: not counted
	get(t, addr, "zed.test")

	stats := p.RevisionStats()
	var keys []string
	for _, s := range stats {
		keys = append(keys, fmt.Sprintf("%s/%d", s.App, s.Revision))
		if len(s.Buckets) != len(LatencyBuckets)+1 || sum(s.Buckets) != s.Requests {
			t.Errorf("%s/%d: buckets %v for %d requests", s.App, s.Revision, s.Buckets, s.Requests)
		}
	}
	if strings.Join(keys, " ") != "app/1 app/2 app/3 zed/4" {
		t.Fatalf("stats of %v, want app/1 app/2 app/3 zed/4, sorted", keys)
	}
	s1, s2, s3 := stats[0], stats[1], stats[2]
	if s1.Requests != 6 || s1.Errors != 0 || s1.ConnectFailures != 0 {
		t.Errorf("stable %+v", s1)
	}
	if sum(s1.Buckets[7:]) != 1 { // the slow one, over LatencyBuckets[6] = 0.1s
		t.Errorf("stable buckets %v: want one over 100ms", s1.Buckets)
	}
	if s2.Requests != 4 || s2.Errors != 4 || s2.ConnectFailures != dials(counts, dead) || s2.ConnectFailures != 1 {
		t.Errorf("canary %+v (dead dialed %d times)", s2, dials(counts, dead))
	}
	if s3.Requests != 1 || s3.Errors != 1 {
		t.Errorf("revision without upstreams %+v", s3)
	}

	// A new table keeps the numbers, whatever the upstreams now are.
	p.SetTable(table(serveUp(t, (&named{name: "new"}).ServeHTTP)))
	get(t, addr, "app.test")
	if s := findStats(t, p, "app", 1); s.Requests != 7 {
		t.Errorf("after SetTable: %+v", s)
	}
	p.SetTable(nil)
	if s := findStats(t, p, "app", 1); s.Requests != 7 {
		t.Errorf("app no longer routed: %+v", s)
	}

	out := scrape(t, p)
	for _, want := range []string{
		`berth_gateway_revision_requests_total{app="app",class="2xx",revision="1"} 7`,
		`berth_gateway_revision_requests_total{app="app",class="5xx",revision="1"} 0`,
		`berth_gateway_revision_requests_total{app="app",class="5xx",revision="2"} 4`,
		`berth_gateway_revision_requests_total{app="app",class="5xx",revision="3"} 1`,
		`berth_gateway_revision_requests_total{app="zed",class="2xx",revision="4"} 1`,
		`berth_gateway_revision_connect_failures_total{app="app",revision="2"} 1`,
		`berth_gateway_revision_connect_failures_total{app="app",revision="1"} 0`,
		`berth_gateway_revision_request_duration_seconds_count{app="app",revision="1"} 7`,
		`berth_gateway_revision_request_duration_seconds_bucket{app="app",revision="1",le="0.1"} 6`,
		`berth_gateway_revision_request_duration_seconds_bucket{app="app",revision="1",le="+Inf"} 7`,
		`berth_gateway_revision_request_duration_seconds_bucket{app="app",revision="2",le="60"} 4`,
		`berth_gateway_requests_total{app="app",code="200"} 7`, // the app's own metrics as before
		`berth_gateway_requests_total{app="app",code="500"} 4`,
		`berth_gateway_requests_total{app="app",code="503"} 2`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(out, `revision="8"`) {
		t.Error("a revision only a client named is exported")
	}
}

func TestRevisionMetricsSharedRegistry(t *testing.T) {
	up := serveUp(t, (&named{name: "up"}).ServeHTTP)
	reg := prometheus.NewRegistry()
	var addrs []string
	var last *Proxy
	for range 2 {
		p := NewProxy(nil, reg, nil)
		ln := listen(t)
		go p.Serve(ln)
		t.Cleanup(func() { p.Shutdown() })
		p.SetTable(NewTable([]AppRoutes{{App: "x", Hosts: []string{"x.test"}, Upstreams: []string{up}, Revisions: []RevisionRoutes{{Revision: 1, Upstreams: []string{up}}}}}))
		addrs = append(addrs, ln.Addr().String())
		last = p
	}
	get(t, addrs[0], "x.test")
	get(t, addrs[1], "x.test")
	get(t, addrs[1], "x.test")
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
	out := scrape(t, last)
	if !strings.Contains(out, `berth_gateway_revision_requests_total{app="x",class="2xx",revision="1"} 3`) {
		t.Fatal(out)
	}
	if s := findStats(t, last, "x", 1); s.Requests != 2 {
		t.Fatalf("a proxy's own stats: %+v", s)
	}
	// A Registerer that cannot gather: the proxy serves its own.
	c := NewProxy(nil, prometheus.WrapRegistererWithPrefix("x_", prometheus.NewRegistry()), nil)
	c.SetTable(NewTable([]AppRoutes{{App: "z", Hosts: []string{"z.test"}, Revisions: []RevisionRoutes{{Revision: 3}}}}))
	if out := scrape(t, c); !strings.Contains(out, `berth_gateway_revision_connect_failures_total{app="z",revision="3"} 0`) {
		t.Fatal(out)
	}
}

func TestSplitWake(t *testing.T) {
	a := newSplitApp(t)
	var p *Proxy
	w := &fakeWaker{onWake: func(string) {
		r := a.routes(&Split{Stable: 1, Canary: 2, Weight: 10000})
		r.IdleEnabled = true
		p.SetTable(NewTable([]AppRoutes{r}))
	}}
	p, addr := startProxy(t, w)
	p.SetTable(NewTable([]AppRoutes{{App: "app", Hosts: []string{"app.test"}, IdleEnabled: true, Idle: true,
		Split: &Split{Stable: 1, Canary: 2, Weight: 10000}}}))
	resp, body := get(t, addr, "app.test")
	if body != "c" {
		t.Fatalf("after wake: %d %q", resp.StatusCode, body)
	}
	checkAnswer(t, resp, body, true)
	if p.Wakes() != 1 {
		t.Fatalf("%d wakes", p.Wakes())
	}
	// A direct request for an idled app wakes it too.
	p.SetTable(NewTable([]AppRoutes{{App: "app", Hosts: []string{"app.test"}, IdleEnabled: true, Idle: true}}))
	resp, body = do(t, "GET", addr, "rev-1.app.test", nil)
	if body != "s" || resp.Header.Get("X-Berth-Revision") != "1" {
		t.Fatalf("direct after wake: %d %q", resp.StatusCode, body)
	}
}

func TestSplitWebSocketAndStream(t *testing.T) {
	echo := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/events" {
				w.Header().Set("Content-Type", "text/event-stream")
				fmt.Fprintf(w, "data: %s\n\n", name)
				w.(http.Flusher).Flush()
				return
			}
			c, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer c.CloseNow()
			for { // until the client closes
				_, b, err := c.Read(context.Background())
				if err != nil {
					return
				}
				_ = c.Write(context.Background(), websocket.MessageText, append([]byte(name+" "), b...))
			}
		}
	}
	s, c := serveUp(t, echo("s")), serveUp(t, echo("c"))
	p, addr := startProxy(t, nil)
	p.SetTable(NewTable([]AppRoutes{{App: "app", Hosts: []string{"app.test"}, Upstreams: []string{s, c},
		Revisions: []RevisionRoutes{{Revision: 1, Upstreams: []string{s}}, {Revision: 2, Upstreams: []string{c}}},
		Split:     &Split{Stable: 1, Canary: 2, Weight: 10000}}}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, cc := range []struct {
		hdr         http.Header
		want        string
		rev, cookie string // of the 101 answer
	}{
		{http.Header{"Cookie": {"berth-rev-app=1"}}, "s", "1", ""},
		{nil, "c", "2", "berth-rev-app=2" + cookieAttrs}, // the split's canary, a new client
		{http.Header{"X-Berth-Revision": {"1"}}, "s", "1", ""},
	} {
		conn, resp, err := websocket.Dial(ctx, "ws://"+addr+"/ws", &websocket.DialOptions{Host: "app.test", HTTPHeader: cc.hdr})
		if err != nil {
			t.Fatalf("%v: dial: %v (%v)", cc.hdr, err, resp)
		}
		if got, cookie := resp.Header.Get("X-Berth-Revision"), resp.Header.Get("Set-Cookie"); got != cc.rev || cookie != cc.cookie {
			t.Errorf("%v: the 101 answer has X-Berth-Revision %q and Set-Cookie %q; want %q and %q", cc.hdr, got, cookie, cc.rev, cc.cookie)
		}
		if err := conn.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
			t.Fatal(err)
		}
		_, b, err := conn.Read(ctx)
		if err != nil || string(b) != cc.want+" hi" {
			t.Fatalf("%v: read %q %v, want %q", cc.hdr, b, err, cc.want+" hi")
		}
		conn.Close(websocket.StatusNormalClosure, "")
	}
	req, _ := http.NewRequest("GET", "http://"+addr+"/events", nil)
	req.Host = "app.test"
	resp, err := httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ev := readEvent(t, bufio.NewReader(resp.Body)); ev != "data: c\n" || resp.Header.Get("X-Berth-Revision") != "2" ||
		resp.Header.Get("Set-Cookie") != "berth-rev-app=2"+cookieAttrs {
		t.Fatalf("stream: %q %v", ev, resp.Header)
	}
}

func TestTableRevisionsCopied(t *testing.T) {
	revs := []RevisionRoutes{{Revision: 1, Upstreams: []string{"a:1"}}}
	sp := &Split{Stable: 1, Canary: 2, Weight: 100}
	tab := NewTable([]AppRoutes{{App: "app", Hosts: []string{"app.test"}, Revisions: revs, Split: sp}})
	revs[0].Upstreams[0], revs[0].Revision = "b:2", 9
	sp.Weight = 9999
	got := tab.Apps()[0]
	if got.Revisions[0].Revision != 1 || got.Revisions[0].Upstreams[0] != "a:1" || got.Split.Weight != 100 || got.Split == sp {
		t.Fatalf("table shares the caller's slices: %+v %+v", got.Revisions, *got.Split)
	}
}

func TestTableRoute(t *testing.T) {
	tab := NewTable([]AppRoutes{
		{App: "app", Hosts: []string{"app.test", "*.wild.test"}},
		{App: "exact", Hosts: []string{"rev-1.app.test"}},
	})
	for _, c := range []struct {
		host string
		app  string
		rev  int64
	}{
		{"app.test", "app", 0},
		{"rev-2.app.test", "app", 2},
		{"Rev-12.APP.test:80", "app", 12},
		{"rev-1.app.test", "exact", 0},
		{"rev-2.x.wild.test", "app", 2},
		{"rev-2.wild.test", "app", 0}, // "wild.test" is not routed: the wildcard match of the whole host
		{"rev-2.nope.test", "", 0},
		{"rev-0.app.test", "", 0},
		{"rev-.app.test", "", 0},
		{"rev-9223372036854775807.app.test", "app", 9223372036854775807},
		{"rev-9223372036854775808.app.test", "", 0},
		{"rev-2", "", 0},
		{"review.app.test", "", 0},
	} {
		i, rev := tab.route([]byte(c.host))
		app := ""
		if i >= 0 {
			app = tab.apps[i].App
		}
		if app != c.app || rev != c.rev {
			t.Errorf("route(%q) = %q %d, want %q %d", c.host, app, rev, c.app, c.rev)
		}
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// BenchmarkHandlerSplit is BenchmarkHandler for an app with a split:
// clients without a cookie (assigned each time) and with one.
func BenchmarkHandlerSplit(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	up := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("hello") }}
	go up.Serve(ln)
	defer up.Shutdown()
	u := ln.Addr().String()
	p := NewProxy(nil, nil, nil)
	p.SetTable(NewTable([]AppRoutes{{App: "bench", Hosts: []string{"bench.test"}, Upstreams: []string{u},
		Revisions: []RevisionRoutes{{Revision: 1, Upstreams: []string{u}}, {Revision: 2, Upstreams: []string{u}}},
		Split:     &Split{Stable: 1, Canary: 2, Weight: 1000}}}))
	remote := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5555}
	for _, c := range []struct{ name, extra string }{
		{"new", ""},
		{"cookie", "Cookie: a=b; berth-rev-bench=1\r\n"},
		{"direct", "X-Berth-Revision: 2\r\n"},
	} {
		b.Run(c.name, func(b *testing.B) {
			var ctx fasthttp.RequestCtx
			raw := []byte("GET /path?x=1 HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: bench\r\nAccept: */*\r\n" + c.extra + "\r\n")
			r := bytes.NewReader(raw)
			br := bufio.NewReader(r)
			b.ReportAllocs()
			for b.Loop() {
				ctx.Init2(nil, nil, false)
				ctx.Request.Reset()
				ctx.Response.Reset()
				r.Reset(raw)
				br.Reset(r)
				if err := ctx.Request.Read(br); err != nil {
					b.Fatal(err)
				}
				ctx.SetRemoteAddr(remote)
				p.handle(&ctx)
				if ctx.Response.StatusCode() != 200 || len(ctx.Response.Header.PeekBytes(hXBerthRevision)) == 0 {
					b.Fatal(ctx.Response.StatusCode(), string(ctx.Response.Body()))
				}
			}
		})
	}
}

func TestSplitCookieForwardedAndErrorRevision(t *testing.T) {
	var got atomic.Value
	up := serveUp(t, func(w http.ResponseWriter, r *http.Request) {
		got.Store(strings.Join(r.Header.Values("Cookie"), "|"))
		fmt.Fprint(w, "s")
	})
	dead := deadAddr(t)
	p, addr := startProxy(t, nil)
	p.SetTable(NewTable([]AppRoutes{{App: "app", Hosts: []string{"app.test"}, Upstreams: []string{up, dead},
		Revisions: []RevisionRoutes{{Revision: 1, Upstreams: []string{up}}, {Revision: 2, Upstreams: []string{dead}}},
		Split:     &Split{Stable: 1, Canary: 2, Weight: 0}}}))
	resp, body := do(t, "GET", addr, "app.test", nil, "Cookie", "a=b; berth-rev-app=1;  c=d", "Cookie", "e=f")
	checkAnswer(t, resp, body, false)
	if g := got.Load(); g != "a=b; berth-rev-app=1;  c=d|e=f" {
		t.Errorf("upstream got Cookie %q", g)
	}
	// The gateway's own error after choosing a revision says which.
	// The canary's only upstream is dead (listed, so not a fallback case).
	for _, host := range []string{"app.test", "rev-2.app.test"} {
		resp, body = do(t, "GET", addr, host, nil, "Cookie", "berth-rev-app=2")
		if resp.StatusCode != 502 || resp.Header.Get("X-Berth-Revision") != "2" || resp.Header.Get("Set-Cookie") != "" {
			t.Errorf("%s, dead canary: %d %q %v", host, resp.StatusCode, body, resp.Header)
		}
	}
}
