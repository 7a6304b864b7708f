package gateway

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// startProxy serves a new proxy on a loopback port.
func startProxy(t testing.TB, w Waker) (*Proxy, string) {
	t.Helper()
	p := NewProxy(w, prometheus.NewRegistry(), nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(ln) }()
	t.Cleanup(func() {
		if err := p.Shutdown(); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return p, ln.Addr().String()
}

// serveUp serves h on a loopback port and returns its address.
func serveUp(t testing.TB, h http.HandlerFunc) string {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}

// named answers with its name, and counts the requests it got.
type named struct {
	name string
	n    atomic.Int64
}

func (u *named) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.n.Add(1)
	_, _ = io.Copy(io.Discard, r.Body)
	fmt.Fprint(w, u.name)
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

var httpc = &http.Client{
	Transport: &http.Transport{MaxIdleConnsPerHost: 100, DisableCompression: true},
	Timeout:   10 * time.Second,
}

// get sends a GET for host through the proxy at addr.
func get(t testing.TB, addr, host string) (*http.Response, string) {
	t.Helper()
	return do(t, "GET", addr, host, nil)
}

func do(t testing.TB, method, addr, host string, body io.Reader, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+"/path?q=1", body)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestRouting(t *testing.T) {
	hello := &named{name: "hello"}
	deep := &named{name: "deep"}
	p, addr := startProxy(t, nil)
	p.SetTable(NewTable([]AppRoutes{
		{App: "hello", Hosts: []string{"hello.localtest.me", "*.hello.test"}, Upstreams: []string{serveUp(t, hello.ServeHTTP)}},
		{App: "deep", Hosts: []string{"*.api.hello.test"}, Upstreams: []string{serveUp(t, deep.ServeHTTP)}},
	}))
	for host, want := range map[string]string{
		"hello.localtest.me":      "hello",
		"HELLO.localtest.me:8080": "hello",
		"x.hello.test":            "hello",
		"x.api.hello.test":        "deep",
		"X.Api.Hello.Test:1":      "deep",
	} {
		resp, body := get(t, addr, host)
		if resp.StatusCode != 200 || body != want {
			t.Errorf("%s: %d %q, want 200 %q", host, resp.StatusCode, body, want)
		}
	}
	resp, body := get(t, addr, "nope.example:8080")
	if resp.StatusCode != 404 || !strings.Contains(body, `"nope.example:8080"`) || len(body) > 200 {
		t.Errorf("unknown host: %d %q", resp.StatusCode, body)
	}
}

func TestBalancingRoundRobinWhenIdle(t *testing.T) {
	ups := []*named{{name: "a"}, {name: "b"}, {name: "c"}}
	p, addr := startProxy(t, nil)
	var addrs []string
	for _, u := range ups {
		addrs = append(addrs, serveUp(t, u.ServeHTTP))
	}
	p.SetTable(NewTable([]AppRoutes{{App: "hello", Hosts: []string{"hello.test"}, Upstreams: addrs}}))
	for range 30 {
		if resp, _ := get(t, addr, "hello.test"); resp.StatusCode != 200 {
			t.Fatal(resp.Status)
		}
	}
	for _, u := range ups {
		if n := u.n.Load(); n != 10 {
			t.Errorf("%s got %d of 30 sequential requests, want 10", u.name, n)
		}
	}
}

func TestBalancingLeastOutstanding(t *testing.T) {
	var busy [3]atomic.Int64
	var served [3]atomic.Int64
	release := make(chan struct{})
	var addrs []string
	for i := range 3 {
		addrs = append(addrs, serveUp(t, func(w http.ResponseWriter, r *http.Request) {
			busy[i].Add(1)
			defer busy[i].Add(-1)
			served[i].Add(1)
			if r.URL.Query().Get("hold") != "" {
				<-release
			} else {
				time.Sleep(5 * time.Millisecond)
			}
			fmt.Fprint(w, i)
		}))
	}
	p, addr := startProxy(t, nil)
	p.SetTable(NewTable([]AppRoutes{{App: "hello", Hosts: []string{"hello.test"}, Upstreams: addrs}}))

	// Two requests held: whichever upstreams they went to must get none of
	// the next ones while they are busy.
	var held sync.WaitGroup
	for range 2 {
		held.Add(1)
		go func() {
			defer held.Done()
			req, _ := http.NewRequest("GET", "http://"+addr+"/?hold=1", nil)
			req.Host = "hello.test"
			resp, err := httpc.Do(req)
			if err == nil {
				resp.Body.Close()
			}
		}()
	}
	waitFor(t, func() bool { return busy[0].Load()+busy[1].Load()+busy[2].Load() == 2 })
	free := -1
	for i := range 3 {
		if busy[i].Load() == 0 {
			free = i
		}
		served[i].Store(0)
	}
	for range 20 {
		_, body := get(t, addr, "hello.test")
		if body != fmt.Sprint(free) {
			t.Fatalf("request went to busy upstream %s, want %d", body, free)
		}
	}
	close(release)
	held.Wait()

	// Under concurrent load, all three take a fair share.
	for i := range 3 {
		served[i].Store(0)
	}
	var wg sync.WaitGroup
	for range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 25 {
				get(t, addr, "hello.test")
			}
		}()
	}
	wg.Wait()
	for i := range 3 {
		if n := served[i].Load(); n < 60 {
			t.Errorf("upstream %d served %d of 300 concurrent requests", i, n)
		}
	}
}

// countDials makes p count its connects per address.
func countDials(p *Proxy) *sync.Map {
	var m sync.Map
	dial := p.dial
	p.dial = func(addr string, timeout time.Duration) (net.Conn, error) {
		v, _ := m.LoadOrStore(addr, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
		return dial(addr, timeout)
	}
	return &m
}

func dials(m *sync.Map, addr string) int64 {
	if v, ok := m.Load(addr); ok {
		return v.(*atomic.Int64).Load()
	}
	return 0
}

func TestDeadUpstreamRetriedAndSkipped(t *testing.T) {
	a, b := &named{name: "a"}, &named{name: "b"}
	dead := deadAddr(t)
	p, addr := startProxy(t, nil)
	counts := countDials(p)
	p.SetTable(NewTable([]AppRoutes{{App: "hello", Hosts: []string{"hello.test"},
		Upstreams: []string{serveUp(t, a.ServeHTTP), dead, serveUp(t, b.ServeHTTP)}}}))
	for i := range 30 {
		resp, body := get(t, addr, "hello.test")
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if n := dials(counts, dead); n != 1 {
		t.Fatalf("dead upstream dialed %d times, want 1 (then skipped)", n)
	}
	if a.n.Load()+b.n.Load() != 30 {
		t.Fatalf("a %d + b %d != 30", a.n.Load(), b.n.Load())
	}

	// A new table that lists it again (still healthy by the table) keeps it
	// skipped until its time is up; dropped and re-listed, it is tried again.
	p.SetTable(NewTable([]AppRoutes{{App: "hello", Hosts: []string{"hello.test"}, Upstreams: []string{dead}}}))
	if resp, body := get(t, addr, "hello.test"); resp.StatusCode != 502 || !strings.Contains(body, "connect") {
		t.Fatalf("only upstream dead: %d %q, want 502", resp.StatusCode, body)
	}
}

func TestRetryBodies(t *testing.T) {
	echo := func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%d:%x", len(b), b[:min(len(b), 4)])
	}
	for _, c := range []struct {
		name    string
		size    int
		chunked bool
		retried bool
	}{
		{"small", 1000, false, true},
		{"limit", maxReplayBody, false, true},
		{"small chunked", 5000, true, true},
		{"large", maxReplayBody + 1, false, false},
		{"large chunked", 200 << 10, true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dead := deadAddr(t)
			p, addr := startProxy(t, nil)
			counts := countDials(p)
			p.SetTable(NewTable([]AppRoutes{{App: "hello", Hosts: []string{"hello.test"},
				Upstreams: []string{dead, serveUp(t, echo)}}}))
			body := bytes.Repeat([]byte{0xab}, c.size)
			want := fmt.Sprintf("%d:abababab", c.size)
			for i := 0; dials(counts, dead) == 0; i++ {
				if i == 10 {
					t.Fatal("dead upstream never tried")
				}
				var r io.Reader = bytes.NewReader(body)
				if c.chunked {
					r = io.MultiReader(r) // unknown length: sent chunked
				}
				resp, got := do(t, "POST", addr, "hello.test", r)
				switch {
				case dials(counts, dead) == 0 || c.retried:
					if resp.StatusCode != 200 || got != want {
						t.Fatalf("POST %d bytes: %d %q, want 200 %q", c.size, resp.StatusCode, got, want)
					}
				case resp.StatusCode != 502:
					t.Fatalf("POST %d bytes to a dead upstream: %d %q, want 502 (not retried)", c.size, resp.StatusCode, got)
				}
			}
		})
	}
}

func TestForwardingHeaders(t *testing.T) {
	var got http.Header
	var gotHost string
	var mu sync.Mutex
	up := serveUp(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got, gotHost = r.Header.Clone(), r.Host
		mu.Unlock()
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-Hop", "1")
		w.Header().Add("Connection", "X-Hop")
		w.Header().Set("Proxy-Authenticate", "Basic")
		w.Header().Set("X-Kept", "yes")
		w.Header().Add("X-Multi", "a") // last, where fasthttp takes a field to fill a deleted one's place
		w.Header().Add("X-Multi", "b")
		w.Header().Add("X-Multi", "c")
		fmt.Fprint(w, "ok")
	})
	p, addr := startProxy(t, nil)
	p.SetTable(NewTable([]AppRoutes{{App: "hello", Hosts: []string{"hello.test"}, Upstreams: []string{up}}}))

	resp, body := do(t, "GET", addr, "Hello.Test:8080", nil,
		"Connection", "X-Custom-Hop, keep-alive",
		"X-Custom-Hop", "1",
		"Keep-Alive", "timeout=5",
		"Proxy-Authorization", "Basic eA==",
		"Proxy-Connection", "keep-alive",
		"Te", "trailers",
		"Upgrade", "h2c",
		"X-Forwarded-For", "203.0.113.7",
		"X-Forwarded-For", "198.51.100.1, 10.0.0.1",
		"X-Forwarded-Proto", "https", // not trusted: the gateway says what it saw
		"X-Request-Id", "abc-123",
		"X-End-To-End", "kept",
		"Via", "1.0 first",
		"Via", "1.1 second",
		"Via", "1.1 third",
	)
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	mu.Lock()
	for _, h := range []string{"Connection", "X-Custom-Hop", "Keep-Alive", "Proxy-Authorization", "Proxy-Connection", "Te", "Upgrade", "Transfer-Encoding", "Trailer"} {
		if v := got.Get(h); v != "" {
			t.Errorf("upstream got hop-by-hop %s: %q", h, v)
		}
	}
	want := map[string]string{
		"X-Forwarded-For":   "203.0.113.7, 198.51.100.1, 10.0.0.1, 127.0.0.1",
		"X-Forwarded-Proto": "http",
		"X-Forwarded-Host":  "Hello.Test:8080",
		"X-Request-Id":      "abc-123",
		"X-End-To-End":      "kept",
	}
	for h, v := range want {
		if got.Get(h) != v {
			t.Errorf("upstream got %s %q, want %q", h, got.Get(h), v)
		}
	}
	if v := got.Values("Via"); strings.Join(v, "|") != "1.0 first|1.1 second|1.1 third" {
		t.Errorf("upstream got Via %q: the order of fields of a name changed", v)
	}
	if gotHost != "Hello.Test:8080" {
		t.Errorf("upstream got Host %q", gotHost)
	}
	mu.Unlock()
	for _, h := range []string{"Keep-Alive", "X-Hop", "Proxy-Authenticate"} {
		if v := resp.Header.Get(h); v != "" {
			t.Errorf("client got hop-by-hop %s: %q", h, v)
		}
	}
	if resp.Header.Get("X-Kept") != "yes" || resp.Header.Get("X-Request-Id") != "abc-123" {
		t.Errorf("client got %v", resp.Header)
	}
	if v := resp.Header.Values("X-Multi"); strings.Join(v, "|") != "a|b|c" {
		t.Errorf("client got X-Multi %q: the order of fields of a name changed", v)
	}

	// No X-Request-Id: one is made, sent up and returned.
	resp, _ = get(t, addr, "hello.test")
	mu.Lock()
	id := got.Get("X-Request-Id")
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(id) || resp.Header.Get("X-Request-Id") != id {
		t.Errorf("request id: upstream %q, client %q", id, resp.Header.Get("X-Request-Id"))
	}
	if got.Get("X-Forwarded-For") != "127.0.0.1" {
		t.Errorf("X-Forwarded-For %q", got.Get("X-Forwarded-For"))
	}
	mu.Unlock()
	get(t, addr, "hello.test")
	mu.Lock()
	if got.Get("X-Request-Id") == id {
		t.Errorf("request id %q twice", id)
	}
	mu.Unlock()

	// The gateway's own error answers carry the request id.
	p.SetTable(NewTable([]AppRoutes{{App: "hello", Hosts: []string{"hello.test"}, Upstreams: []string{deadAddr(t)}}}))
	resp, _ = do(t, "GET", addr, "hello.test", nil, "X-Request-Id", "req-502")
	if resp.StatusCode != 502 || resp.Header.Get("X-Request-Id") != "req-502" {
		t.Errorf("%d X-Request-Id %q", resp.StatusCode, resp.Header.Get("X-Request-Id"))
	}
}

// TestRawRequest checks what the proxy does with the bytes of a request and
// response: path and query as sent, an HTTP/1.0 client, HEAD, Connection:
// close from the upstream not closing the client's connection.
func TestRawRequest(t *testing.T) {
	var lastURI, lastProto atomic.Value
	up := serveUp(t, func(w http.ResponseWriter, r *http.Request) {
		lastURI.Store(r.RequestURI)
		lastProto.Store(r.Proto)
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
		w.Header().Set("Content-Length", "5")
		fmt.Fprint(w, "hello")
	})
	p, addr := startProxy(t, nil)
	p.SetTable(NewTable([]AppRoutes{{App: "hello", Hosts: []string{"hello.test"}, Upstreams: []string{up}}}))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	send := func(req string) *http.Response {
		t.Helper()
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, &http.Request{Method: strings.Fields(req)[0]})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Header.Set("X-Body", string(b))
		return resp
	}
	resp := send("GET /a//b/%2e%2E/c?x=1&y=%20 HTTP/1.1\r\nHost: hello.test\r\n\r\n")
	if resp.StatusCode != 200 || lastURI.Load() != "/a//b/%2e%2E/c?x=1&y=%20" || lastProto.Load() != "HTTP/1.1" {
		t.Fatalf("%d, upstream got %v %v", resp.StatusCode, lastURI.Load(), lastProto.Load())
	}
	resp = send("HEAD / HTTP/1.1\r\nHost: hello.test\r\n\r\n")
	if resp.StatusCode != 200 || resp.Header.Get("X-Body") != "" || resp.ContentLength != 5 {
		t.Fatalf("HEAD: %d %q %d", resp.StatusCode, resp.Header.Get("X-Body"), resp.ContentLength)
	}
	resp = send("GET /close HTTP/1.1\r\nHost: hello.test\r\n\r\n")
	if resp.StatusCode != 200 || resp.Close || resp.Header.Get("X-Body") != "hello" {
		t.Fatalf("upstream close: %d close=%v %q", resp.StatusCode, resp.Close, resp.Header.Get("X-Body"))
	}
	resp = send("GET /again HTTP/1.0\r\nHost: hello.test\r\nConnection: keep-alive\r\n\r\n")
	if resp.StatusCode != 200 || resp.Header.Get("X-Body") != "hello" || lastProto.Load() != "HTTP/1.1" {
		t.Fatalf("HTTP/1.0: %d %q, upstream got %v", resp.StatusCode, resp.Header.Get("X-Body"), lastProto.Load())
	}
	resp = send("GET /last HTTP/1.1\r\nHost: hello.test\r\nConnection: close\r\n\r\n")
	if resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("client close: %d close=%v", resp.StatusCode, resp.Close)
	}
}

// rawUpstream answers every connection with resp, as it is, then closes.
func rawUpstream(t *testing.T, resp string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for { // the request header
					line, err := br.ReadString('\n')
					if err != nil || line == "\r\n" {
						break
					}
				}
				_, _ = io.WriteString(c, resp)
			}()
		}
	}()
	return ln.Addr().String()
}

// TestOddUpstreams: header lines ending in a bare LF (as CGI scripts write
// them), an HTTP/1.0 answer whose body ends with the connection, an
// upstream that closes without answering.
func TestOddUpstreams(t *testing.T) {
	p, addr := startProxy(t, nil)
	p.SetTable(NewTable([]AppRoutes{
		{App: "lf", Hosts: []string{"lf.test"}, Upstreams: []string{rawUpstream(t, "HTTP/1.0 200 OK\nContent-Type: text/plain\nX-Up-Kept: yes\nConnection: X-Up-Secret\nX-Up-Secret: 1\n\nline 1\nline 2\n")}},
		{App: "crlf", Hosts: []string{"crlf.test"}, Upstreams: []string{rawUpstream(t, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nX-Up-Kept: yes\r\n\r\nuntil close")}},
		{App: "mute", Hosts: []string{"mute.test"}, Upstreams: []string{rawUpstream(t, "")}},
	}))
	for host, want := range map[string]string{"lf.test": "line 1\nline 2\n", "crlf.test": "until close"} {
		resp, body := get(t, addr, host)
		if resp.StatusCode != 200 || body != want || resp.Header.Get("X-Up-Kept") != "yes" || resp.Header.Get("X-Up-Secret") != "" {
			t.Errorf("%s: %d %q %v", host, resp.StatusCode, body, resp.Header)
		}
	}
	if resp, body := get(t, addr, "mute.test"); resp.StatusCode != 502 {
		t.Errorf("upstream closed without answering: %d %q, want 502", resp.StatusCode, body)
	}
}

func TestStaleUpstreamConnection(t *testing.T) {
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "ok %d", len(b))
	}))
	s.Config.IdleTimeout = 50 * time.Millisecond // closes kept-alive connections quickly
	s.Start()
	defer s.Close()
	p, addr := startProxy(t, nil)
	p.SetTable(NewTable([]AppRoutes{{App: "hello", Hosts: []string{"hello.test"}, Upstreams: []string{s.Listener.Addr().String()}}}))
	for i := range 5 {
		if resp, body := get(t, addr, "hello.test"); resp.StatusCode != 200 {
			t.Fatalf("GET %d: %d %q", i, resp.StatusCode, body)
		}
		if resp, body := do(t, "POST", addr, "hello.test", strings.NewReader("x")); resp.StatusCode != 200 || body != "ok 1" {
			t.Fatalf("POST %d: %d %q", i, resp.StatusCode, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestTimeouts(t *testing.T) {
	up := serveUp(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(time.Second)
		}
		fmt.Fprint(w, "ok")
	})
	p, addr := startProxy(t, nil)
	p.SetTable(NewTable([]AppRoutes{
		{App: "hello", Hosts: []string{"hello.test"}, Upstreams: []string{up}, Timeout: 200 * time.Millisecond},
		{App: "patient", Hosts: []string{"patient.test"}, Upstreams: []string{up}, Timeout: -1},
	}))
	start := time.Now()
	req, _ := http.NewRequest("GET", "http://"+addr+"/slow", nil)
	req.Host = "hello.test"
	resp, err := httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 504 || time.Since(start) > 900*time.Millisecond {
		t.Fatalf("slow upstream: %d after %v, want 504 after 200ms", resp.StatusCode, time.Since(start))
	}
	req.Host = "patient.test"
	if resp, err = httpc.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("no timeout: %d", resp.StatusCode)
	}
}

func TestNoUpstreamNotIdle(t *testing.T) {
	p, addr := startProxy(t, nil)
	p.SetTable(NewTable([]AppRoutes{{App: "hello", Hosts: []string{"hello.test"}}}))
	start := time.Now()
	resp, body := get(t, addr, "hello.test")
	if resp.StatusCode != 503 || !strings.Contains(body, "hello") || time.Since(start) > time.Second {
		t.Fatalf("%d %q after %v", resp.StatusCode, body, time.Since(start))
	}
	if p.Wakes() != 0 {
		t.Fatal("woke an app that does not idle")
	}
}

// readEvent reads one server-sent event, failing after a second.
func readEvent(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	type result struct {
		s   string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		var ev strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				ch <- result{ev.String(), err}
				return
			}
			if line == "\n" {
				ch <- result{ev.String(), nil}
				return
			}
			ev.WriteString(line)
		}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("reading event: %v (got %q)", r.err, r.s)
		}
		return r.s
	case <-time.After(2 * time.Second):
		t.Fatal("event not flushed through the proxy")
		return ""
	}
}

func TestStreaming(t *testing.T) {
	for _, ct := range []string{"text/event-stream", "application/octet-stream"} {
		t.Run(ct, func(t *testing.T) {
			next := make(chan string)
			up := serveUp(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", ct)
				w.WriteHeader(200)
				w.(http.Flusher).Flush()
				for ev := range next {
					fmt.Fprintf(w, "data: %s\n\n", ev)
					w.(http.Flusher).Flush()
				}
			})
			p, addr := startProxy(t, nil)
			p.SetTable(NewTable([]AppRoutes{{App: "hello", Hosts: []string{"hello.test"}, Upstreams: []string{up}, Timeout: 300 * time.Millisecond}}))
			req, _ := http.NewRequest("GET", "http://"+addr+"/events", nil)
			req.Host = "hello.test"
			resp, err := httpc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != ct {
				t.Fatalf("%d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			br := bufio.NewReader(resp.Body)
			for i := range 5 {
				if i == 2 {
					time.Sleep(400 * time.Millisecond) // longer than the route's timeout: streams are not cut
				}
				next <- fmt.Sprint(i)
				if ev := readEvent(t, br); ev != fmt.Sprintf("data: %d\n", i) {
					t.Fatalf("event %d: %q", i, ev)
				}
			}
			close(next)
			if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
				t.Fatalf("end of stream: %q %v", rest, err)
			}
		})
	}
}

func TestLargeResponseStreamed(t *testing.T) {
	const size = 8 << 20
	up := serveUp(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(size))
		chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096)
		for n := 0; n < size; n += len(chunk) {
			_, _ = w.Write(chunk)
		}
	})
	p, addr := startProxy(t, nil)
	p.SetTable(NewTable([]AppRoutes{{App: "hello", Hosts: []string{"hello.test"}, Upstreams: []string{up}}}))
	for range 3 { // the connection goes back to the pool after each
		resp, body := get(t, addr, "hello.test")
		if resp.StatusCode != 200 || len(body) != size || resp.ContentLength != size {
			t.Fatalf("%d, %d bytes, Content-Length %d", resp.StatusCode, len(body), resp.ContentLength)
		}
	}
}

func TestBrokenStreamIsNotComplete(t *testing.T) {
	up := serveUp(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, "partial")
		w.(http.Flusher).Flush()
		c, _, _ := w.(http.Hijacker).Hijack()
		c.Close() // mid-body
	})
	p, addr := startProxy(t, nil)
	p.SetTable(NewTable([]AppRoutes{{App: "hello", Hosts: []string{"hello.test"}, Upstreams: []string{up}}}))
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	req.Host = "hello.test"
	resp, err := httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("a body cut by the upstream reads as complete")
	}
}

func TestWebSocket(t *testing.T) {
	up := serveUp(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Forwarded-For") == "" {
			http.Error(w, "no X-Forwarded-For", 400)
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, b, err := c.Read(context.Background())
			if err != nil {
				return
			}
			if err := c.Write(context.Background(), typ, append([]byte("echo "), b...)); err != nil {
				return
			}
		}
	})
	p, addr := startProxy(t, nil)
	p.SetTable(NewTable([]AppRoutes{{App: "hello", Hosts: []string{"hello.test"}, Upstreams: []string{deadAddr(t), up}, Timeout: 200 * time.Millisecond}}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 3 { // one of them meets the dead upstream first
		c, resp, err := websocket.Dial(ctx, "ws://"+addr+"/ws", &websocket.DialOptions{Host: "hello.test"})
		if err != nil {
			t.Fatalf("dial: %v (%v)", err, resp)
		}
		for i := range 3 {
			if i == 1 {
				time.Sleep(300 * time.Millisecond) // longer than the route's timeout
			}
			msg := fmt.Sprintf("message %d", i)
			if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			_, b, err := c.Read(ctx)
			if err != nil || string(b) != "echo "+msg {
				t.Fatalf("read %q %v", b, err)
			}
		}
		c.Close(websocket.StatusNormalClosure, "")
	}
	// A request the upstream does not upgrade gets its answer.
	resp, body := do(t, "GET", addr, "hello.test", nil, "Connection", "Upgrade", "Upgrade", "websocket")
	if resp.StatusCode != 400 && resp.StatusCode != 426 {
		t.Fatalf("plain upgrade request: %d %q", resp.StatusCode, body)
	}
}

func TestTableSwapUnderLoad(t *testing.T) {
	var ups []*named
	var addrs []string
	for _, n := range []string{"a1", "a2", "b1", "b2"} {
		u := &named{name: n}
		ups = append(ups, u)
		addrs = append(addrs, serveUp(t, func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(time.Millisecond)
			u.ServeHTTP(w, r)
		}))
	}
	p, addr := startProxy(t, nil)
	table := func(idx ...int) *Table {
		var list []string
		for _, i := range idx {
			list = append(list, addrs[i])
		}
		return NewTable([]AppRoutes{{App: "hello", Hosts: []string{"hello.test"}, Upstreams: list}})
	}
	p.SetTable(table(0, 1))
	stop := make(chan struct{})
	var failed, total atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest("POST", "http://"+addr+"/", strings.NewReader("body"))
				req.Host = "hello.test"
				resp, err := httpc.Do(req)
				total.Add(1)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
			}
		}()
	}
	tables := [][]int{{0, 1}, {1, 2}, {2}, {2, 3}, {3, 0}, {0, 1, 2, 3}}
	for i := range 60 {
		p.SetTable(table(tables[i%len(tables)]...))
		time.Sleep(10 * time.Millisecond)
	}
	p.SetTable(table(2, 3))
	time.Sleep(50 * time.Millisecond) // requests that chose a1/a2 before finish
	before := ups[0].n.Load() + ups[1].n.Load()
	time.Sleep(200 * time.Millisecond)
	after := ups[0].n.Load() + ups[1].n.Load()
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed across table swaps", failed.Load(), total.Load())
	}
	for _, u := range ups {
		if u.n.Load() == 0 {
			t.Errorf("%s never got traffic", u.name)
		}
	}
	if after != before {
		t.Errorf("upstreams no longer listed got %d more requests", after-before)
	}
	t.Logf("%d requests, none failed", total.Load())
}

func TestShutdownEndsStreams(t *testing.T) {
	up := serveUp(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	p := NewProxy(nil, nil, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(ln)
	p.SetTable(NewTable([]AppRoutes{{App: "hello", Hosts: []string{"hello.test"}, Upstreams: []string{up}}}))
	req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/", nil)
	req.Host = "hello.test"
	resp, err := httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	done := make(chan error)
	go func() { done <- p.Shutdown() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown waits for an endless stream")
	}
	if err := p.Serve(ln); err == nil {
		t.Fatal("Serve after Shutdown")
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkProxy measures requests through the proxy to a fasthttp
// upstream on loopback, from parallel keep-alive clients.
func BenchmarkProxy(b *testing.B) {
	body := []byte("hello from upstream\n")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	up := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("text/plain")
		ctx.SetBody(body)
	}}
	go up.Serve(ln)
	defer up.Shutdown()
	p, addr := startProxy(b, nil)
	p.SetTable(NewTable([]AppRoutes{{App: "bench", Hosts: []string{"bench.test"}, Upstreams: []string{ln.Addr().String()}}}))
	c := &fasthttp.HostClient{Addr: addr, MaxConns: 1024}
	b.SetParallelism(16) // 16 clients per CPU: throughput rather than one client's latency
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI("http://bench.test/")
		for pb.Next() {
			if err := c.Do(req, resp); err != nil {
				b.Fatal(err)
			}
			if resp.StatusCode() != 200 || !bytes.Equal(resp.Body(), body) {
				b.Fatalf("%d %q", resp.StatusCode(), resp.Body())
			}
		}
	})
}

// BenchmarkHandler measures the proxy's handler alone (no client side
// network), to find allocations on the hot path.
func BenchmarkHandler(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	up := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("hello") }}
	go up.Serve(ln)
	defer up.Shutdown()
	p := NewProxy(nil, nil, nil)
	p.SetTable(NewTable([]AppRoutes{{App: "bench", Hosts: []string{"bench.test"}, Upstreams: []string{ln.Addr().String()}}}))
	remote := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5555}
	var ctx fasthttp.RequestCtx
	raw := []byte("GET /path?x=1 HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	r := bytes.NewReader(raw)
	br := bufio.NewReader(r)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
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
		if ctx.Response.StatusCode() != 200 {
			b.Fatal(ctx.Response.StatusCode(), string(ctx.Response.Body()))
		}
	}
}
