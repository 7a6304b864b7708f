package e2e

// End-to-end tests of the gateway that `berth up` runs on --gateway-addr
// (the harness gives every berth its own free port, b.gwAddr): routing by
// Host, balancing, passive health, forwarding headers, streams and
// WebSockets, scale to zero and wakes, and the metrics served beside the API.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// ---- helpers ----

// gwClient talks to a gateway; it keeps connections alive, as browsers and
// load balancers in front of a gateway do.
var gwClient = &http.Client{
	Timeout: 15 * time.Second,
	Transport: &http.Transport{
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     30 * time.Second,
	},
}

// gwResp is one answer of the gateway.
type gwResp struct {
	code   int
	body   string
	header http.Header
	took   time.Duration
}

// gwGet sends GET path to the gateway with the Host header host.
func (b *berth) gwGet(host, path string) (gwResp, error) {
	return b.gwGetWith(gwClient, host, path)
}

func (b *berth) gwGetWith(c *http.Client, host, path string) (gwResp, error) {
	req, err := http.NewRequest("GET", "http://"+b.gwAddr+path, nil)
	if err != nil {
		return gwResp{}, err
	}
	req.Host = host
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return gwResp{took: time.Since(start)}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return gwResp{code: resp.StatusCode, body: string(data), header: resp.Header, took: time.Since(start)}, err
}

// rawGet sends one GET over a fresh TCP connection, byte for byte as
// given (Host and the other header lines), and reads the answer as sent:
// no client library adds, drops or normalises headers on either side.
func (b *berth) rawGet(t *testing.T, host, path string, headers ...string) (*http.Response, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", b.gwAddr, 5*time.Second)
	if err != nil {
		t.Fatalf("connect to the gateway %s: %v", b.gwAddr, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	var sb strings.Builder
	fmt.Fprintf(&sb, "GET %s HTTP/1.1\r\nHost: %s\r\n", path, host)
	for _, h := range headers {
		sb.WriteString(h + "\r\n")
	}
	sb.WriteString("\r\n")
	if _, err := io.WriteString(conn, sb.String()); err != nil {
		t.Fatalf("write to the gateway: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("GET %s (Host %s) through the gateway: %v", path, host, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s (Host %s) through the gateway: reading the body: %v", path, host, err)
	}
	return resp, string(data)
}

// servedBy returns the instance hostname in a demo answer
// ("hello from hello-1.vm (GREETING=...)"), or "".
func servedBy(body string) string {
	rest, ok := strings.CutPrefix(strings.TrimSpace(body), "hello from ")
	if !ok {
		return ""
	}
	host, _, _ := strings.Cut(rest, " ")
	return host
}

// instanceOf turns a demo hostname ("hello-1.vm") into its instance name.
func instanceOf(hostname string) string {
	name, _, _ := strings.Cut(hostname, ".")
	return name
}

// sample sends n sequential GETs / through the gateway and returns how many
// each instance answered, and the failures.
func (b *berth) sample(host string, n int) (map[string]int, []string) {
	seen := map[string]int{}
	var fails []string
	for range n {
		r, err := b.gwGet(host, "/")
		switch {
		case err != nil:
			fails = append(fails, err.Error())
		case r.code != 200 || servedBy(r.body) == "":
			fails = append(fails, fmt.Sprintf("%d %q", r.code, r.body))
		default:
			seen[instanceOf(servedBy(r.body))]++
		}
	}
	return seen, fails
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// waitRouted waits until the gateway answers 200 from app for host.
func (b *berth) waitRouted(t *testing.T, host, app string) {
	t.Helper()
	waitFor(t, 20*time.Second, func() (bool, string) {
		r, err := b.gwGet(host, "/")
		if err != nil {
			return false, err.Error()
		}
		return r.code == 200 && strings.HasPrefix(servedBy(r.body), app+"-"),
			fmt.Sprintf("GET / (Host %s) through the gateway: %d %q; want 200 from an instance of %s", host, r.code, r.body, app)
	})
}

// route is one row of GET /v1/routes.
type route struct {
	Host       string    `json:"host"`
	App        string    `json:"app"`
	Instances  []string  `json:"instances"`
	Idle       bool      `json:"idle"`
	IdleAfter  string    `json:"idle_after"`
	LastAccess time.Time `json:"last_access"`
}

func (b *berth) routes(t *testing.T) []route {
	t.Helper()
	var l list[route]
	b.getJSON(t, "/v1/routes", &l)
	return l.Items
}

func routeFor(rs []route, host string) (route, bool) {
	for _, r := range rs {
		if r.Host == host {
			return r, true
		}
	}
	return route{}, false
}

// appRecord is what the tests read of GET /v1/apps/{name}.
type appRecord struct {
	Revision    int64  `json:"revision"`
	Idled       bool   `json:"idled"`
	Deleting    bool   `json:"deleting"`
	ImageDigest string `json:"image_digest"`
}

// metrics fetches GET /metrics from the API address, without a token.
func (b *berth) metrics(t *testing.T) string {
	t.Helper()
	code, data, err := b.rawRequest("GET", "/metrics", nil, "", "")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	if code != 200 {
		t.Fatalf("GET /metrics without a token: %d %s; want 200", code, data)
	}
	return string(data)
}

// metricValue finds `name{labels} value` in a Prometheus text answer;
// labels is the exact label set as printed (`app="hello",code="200"`).
func metricValue(text, name, labels string) (float64, bool) {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name+"{"+labels+"}") + ` (\S+)$`)
	m := re.FindStringSubmatch(text)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	return v, err == nil
}

func metricLines(text, name string) string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, name) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// routedSpec is a demo app with routes, and more spec lines if given.
func routedSpec(name string, replicas int, routes []string, more ...string) string {
	quoted := make([]string, len(routes))
	for i, r := range routes {
		quoted[i] = strconv.Quote(r)
	}
	return demoSpec(name, imageDemo1, replicas) +
		"routes: [" + strings.Join(quoted, ", ") + "]\n" + strings.Join(more, "")
}

// waitRoutable waits until app has n routable instances.
func (b *berth) waitRoutable(t *testing.T, app string, n int) []instance {
	t.Helper()
	var insts []instance
	waitFor(t, 30*time.Second, func() (bool, string) {
		insts = b.instances(t, app)
		return len(insts) == n && countRoutable(insts) == n, describe(insts)
	})
	return insts
}

func describeEvents(evs []event) string {
	parts := make([]string, len(evs))
	for i, e := range evs {
		parts[i] = fmt.Sprintf("%s %s %s %s", e.Time.Format("15:04:05.000"), e.Kind, e.Instance, e.Message)
	}
	return strings.Join(parts, "\n")
}

// load sends GETs through the gateway every interval until stop is
// called, and returns what failed (anything but a 200 from an instance).
type load struct {
	stop     func()
	mu       sync.Mutex
	sent     int
	fails    []string
	maxTook  time.Duration
	finished chan struct{}
}

func (b *berth) startLoad(host string, every time.Duration) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{stop: cancel, finished: make(chan struct{})}
	go func() {
		defer close(l.finished)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			at := time.Now()
			r, err := b.gwGet(host, "/")
			l.mu.Lock()
			l.sent++
			l.maxTook = max(l.maxTook, r.took)
			switch {
			case err != nil:
				l.fails = append(l.fails, fmt.Sprintf("%s: %v (after %s)", at.Format("15:04:05.000"), err, r.took.Round(time.Millisecond)))
			case r.code != 200 || servedBy(r.body) == "":
				l.fails = append(l.fails, fmt.Sprintf("%s: %d %q (after %s)", at.Format("15:04:05.000"), r.code, r.body, r.took.Round(time.Millisecond)))
			}
			l.mu.Unlock()
		}
	}()
	return l
}

// end stops the load and returns requests sent, failures, slowest answer.
func (l *load) end() (int, []string, time.Duration) {
	l.stop()
	<-l.finished
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sent, l.fails, l.maxTook
}

// ---- tests ----

// TestGatewayRoutesByHost: requests spread over all instances; exact names
// win over wildcards; Host matching ignores case and port; an unknown host
// is a 404 naming it; GET /v1/routes agrees; server-sent events are streamed
// and WebSockets upgraded through the gateway; /metrics on the API address
// counts the requests per app without a token.
func TestGatewayRoutesByHost(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	b.deploy(t, routedSpec("hello", 3, []string{"hello.localtest.me", "*.hello.test"}), "--detach")
	b.deploy(t, routedSpec("api", 1, []string{"api.hello.test"}), "--detach")
	b.waitRoutable(t, "hello", 3)
	b.waitRoutable(t, "api", 1)
	b.waitRouted(t, "hello.localtest.me", "hello")

	t.Run("spread", func(t *testing.T) {
		// The gateway may learn of the instances one by one: wait until it
		// knows all three, then count.
		waitFor(t, 15*time.Second, func() (bool, string) {
			seen, fails := b.sample("hello.localtest.me", 12)
			return len(seen) == 3 && len(fails) == 0, fmt.Sprintf("12 GETs answered by %v; failures %v", seen, fails)
		})
		seen, fails := b.sample("hello.localtest.me", 60)
		if len(fails) > 0 {
			t.Errorf("%d of 60 GETs through the gateway failed: %v", len(fails), fails)
		}
		if got := keys(seen); strings.Join(got, ",") != "hello-1,hello-2,hello-3" {
			t.Errorf("60 GETs were answered by %v, want hello-1, hello-2 and hello-3", seen)
		}
		for inst, n := range seen {
			// Sequential requests are all ties for least-outstanding: they
			// should go round robin, 20 each.
			if n < 10 {
				t.Errorf("instance %s answered only %d of 60 sequential GETs (%v): not balanced", inst, n, seen)
			}
		}
		t.Logf("60 GETs: %v", seen)
	})

	t.Run("hosts", func(t *testing.T) {
		cases := []struct {
			host, wantApp string // "" : 404
		}{
			{"hello.localtest.me", "hello"},
			{"HELLO.LocalTest.ME", "hello"},
			{"hello.localtest.me:8080", "hello"},
			{"Hello.LOCALTEST.me:1", "hello"},
			{"x.hello.test", "hello"},
			{"deep.er.hello.test", "hello"},
			{"X.Hello.Test:443", "hello"},
			{"api.hello.test", "api"},      // exact beats *.hello.test
			{"API.HELLO.TEST:8080", "api"}, // ... whatever the case and port
			{"hello.test", ""},             // the wildcard needs a label before .hello.test
			{"api.hello.test.example", ""},
			{"nope.localtest.me", ""},
		}
		for _, c := range cases {
			resp, body := b.rawGet(t, c.host, "/", "Connection: close")
			if c.wantApp == "" {
				if resp.StatusCode != 404 {
					t.Errorf("Host %q: %d %q; want 404", c.host, resp.StatusCode, body)
					continue
				}
				if !strings.Contains(body, c.host) || len(body) > 200 {
					t.Errorf("Host %q: 404 body %q; want a short body naming the host", c.host, body)
				}
				continue
			}
			if got := servedBy(body); resp.StatusCode != 200 || !strings.HasPrefix(got, c.wantApp+"-") {
				t.Errorf("Host %q: %d %q; want 200 from an instance of %s", c.host, resp.StatusCode, body, c.wantApp)
			}
		}
	})

	t.Run("v1 routes", func(t *testing.T) {
		rs := b.routes(t)
		var hosts []string
		for _, r := range rs {
			hosts = append(hosts, r.Host+"="+r.App)
		}
		if got, want := strings.Join(hosts, " "), "*.hello.test=hello api.hello.test=api hello.localtest.me=hello"; got != want {
			t.Errorf("GET /v1/routes: hosts %q, want %q (sorted by host)", got, want)
		}
		addrs := map[string]bool{}
		for _, i := range b.instances(t, "hello") {
			addrs[i.Status.Address] = true
		}
		for _, r := range rs {
			if r.App != "hello" {
				continue
			}
			if len(r.Instances) != 3 || r.Idle || r.IdleAfter != "" {
				t.Errorf("GET /v1/routes: %+v; want 3 instances, not idle, no idle_after", r)
			}
			for _, a := range r.Instances {
				if !addrs[a] {
					t.Errorf("GET /v1/routes: %s lists %s, not an address of hello's instances %v", r.Host, a, keys(addrs))
				}
			}
		}
	})

	t.Run("server-sent events", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "http://"+b.gwAddr+"/events?n=10&ms=100", nil)
		req.Host = "hello.localtest.me"
		start := time.Now()
		resp, err := gwClient.Do(req)
		if err != nil {
			t.Fatalf("GET /events through the gateway: %v", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
			t.Fatalf("GET /events: %d, Content-Type %q; want 200 text/event-stream", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		var got []string
		var at []time.Duration
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, "data: ") {
				got = append(got, strings.TrimPrefix(line, "data: "))
				at = append(at, time.Since(start))
			}
		}
		if err := sc.Err(); err != nil {
			t.Errorf("reading the event stream: %v", err)
		}
		if strings.Join(got, ",") != "1,2,3,4,5,6,7,8,9,10" {
			t.Fatalf("events %v; want data: 1 .. data: 10", got)
		}
		// The app writes one event every 100ms: streamed, they arrive
		// spread over ~900ms; buffered, all at once at the end.
		if spread := at[9] - at[0]; spread < 600*time.Millisecond || at[0] > 600*time.Millisecond {
			t.Errorf("events arrived at %v: the first after %s, the last %s later; want the first at once and the rest spread over ~900ms (streamed, not buffered)", at, at[0], spread)
		}
	})

	t.Run("websocket", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		dialStart := time.Now()
		c, resp, err := websocket.Dial(ctx, "ws://"+b.gwAddr+"/ws", &websocket.DialOptions{Host: "hello.localtest.me"})
		dialTook := time.Since(dialStart)
		if err != nil {
			code := 0
			if resp != nil {
				code = resp.StatusCode
			}
			t.Fatalf("WebSocket upgrade of /ws through the gateway: %v (status %d)", err, code)
		}
		defer c.CloseNow()
		// The demo (coder/websocket) reads messages of up to 32 KiB.
		for i, msg := range []string{"ping 1", strings.Repeat("x", 30000), "ping 3"} {
			if i == 2 {
				time.Sleep(time.Second) // an idle tunnel stays open
			}
			typ := websocket.MessageText
			if i == 1 {
				typ = websocket.MessageBinary
			}
			if err := c.Write(ctx, typ, []byte(msg)); err != nil {
				t.Fatalf("write message %d: %v", i+1, err)
			}
			gtyp, got, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("read the echo of message %d through the gateway (upgrade answered %d %v after %s): %v\nstraight to the instances: %s",
					i+1, resp.StatusCode, resp.Header, dialTook.Round(time.Millisecond), err, directEchoes(t, b, "hello"))
			}
			if gtyp != typ || string(got) != msg {
				t.Errorf("echo of message %d: type %v, %d bytes; want type %v, the %d bytes sent", i+1, gtyp, len(got), typ, len(msg))
			}
		}
		if err := c.Close(websocket.StatusNormalClosure, "bye"); err != nil {
			t.Errorf("close the WebSocket: %v", err)
		}

		// An upgrade for a host nobody routes is refused like any request.
		_, resp, err = websocket.Dial(ctx, "ws://"+b.gwAddr+"/ws", &websocket.DialOptions{Host: "nope.localtest.me"})
		if err == nil || resp == nil || resp.StatusCode != 404 {
			code := 0
			if resp != nil {
				code = resp.StatusCode
			}
			t.Errorf("WebSocket upgrade for an unknown host: status %d, err %v; want 404", code, err)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		text := b.metrics(t)
		if v, ok := metricValue(text, "berth_gateway_requests_total", `app="hello",code="200"`); !ok || v < 60 {
			t.Errorf("GET /metrics: berth_gateway_requests_total for hello/200 is %v (found %v); want at least 60:\n%s", v, ok, metricLines(text, "berth_gateway_requests_total"))
		}
		if v, ok := metricValue(text, "berth_gateway_requests_total", `app="api",code="200"`); !ok || v < 2 {
			t.Errorf("GET /metrics: berth_gateway_requests_total for api/200 is %v (found %v); want at least 2:\n%s", v, ok, metricLines(text, "berth_gateway_requests_total"))
		}
		if v, ok := metricValue(text, "berth_gateway_requests_total", `app="",code="404"`); !ok || v < 3 {
			t.Errorf("GET /metrics: unknown-host 404s counted %v (found %v); want at least 3:\n%s", v, ok, metricLines(text, "berth_gateway_requests_total"))
		}
		if v, ok := metricValue(text, "berth_gateway_upstreams", `app="hello"`); !ok || v != 3 {
			t.Errorf("GET /metrics: berth_gateway_upstreams for hello is %v (found %v); want 3:\n%s", v, ok, metricLines(text, "berth_gateway_upstreams"))
		}
		if !strings.Contains(text, `berth_gateway_request_duration_seconds_count{app="hello"}`) {
			t.Errorf("GET /metrics: no request duration histogram for hello")
		}
		// The API itself still wants its token.
		if code, _, err := b.rawRequest("GET", "/v1/apps", nil, "", ""); err != nil || code != 401 {
			t.Errorf("GET /v1/apps without a token: %d %v; want 401", code, err)
		}
	})
}

// directEchoes checks the WebSocket echo of each instance of app straight
// at its address, bypassing the gateway: for diagnosing a gateway failure.
func directEchoes(t *testing.T, b *berth, app string) string {
	var out []string
	for _, i := range b.instances(t, app) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		res := "ok"
		c, _, err := websocket.Dial(ctx, "ws://"+i.Status.Address+"/ws", nil)
		if err == nil {
			if err = c.Write(ctx, websocket.MessageText, []byte("direct")); err == nil {
				_, _, err = c.Read(ctx)
			}
			c.CloseNow()
		}
		if err != nil {
			res = err.Error()
		}
		cancel()
		out = append(out, fmt.Sprintf("%s (%s, container %.12s): %s", i.Name, i.Status.Address, i.Status.ContainerID, res))
	}
	return strings.Join(out, "; ")
}

// hdrCommand runs busybox httpd with two CGI scripts that print their
// environment (the request headers, as HTTP_*) after a response header of
// their own, with hop-by-hop headers: /cgi-bin/env ends its header lines
// with CRLF, /cgi-bin/lf with a bare LF (as many CGI scripts do; busybox
// httpd passes the script's header on as it is).
const hdrCommand = `mkdir -p /www/cgi-bin && ` +
	`printf '%s\n' '#!/bin/sh' 'printf "Content-Type: text/plain\r\nX-Up-Secret: 1\r\nConnection: X-Up-Secret\r\nKeep-Alive: timeout=99\r\nProxy-Authenticate: Basic\r\nX-Up-Kept: yes\r\n\r\n"' 'env' > /www/cgi-bin/env && ` +
	`printf '%s\n' '#!/bin/sh' 'echo Content-Type: text/plain' 'echo X-Up-Kept: yes' 'echo' 'env' > /www/cgi-bin/lf && ` +
	`chmod +x /www/cgi-bin/env /www/cgi-bin/lf && exec httpd -f -p 8080 -h /www`

// TestGatewayForwardingHeaders: the upstream gets X-Forwarded-For (appended
// to), -Proto and -Host, and an X-Request-Id (the client's, or a new one,
// returned to the client too); hop-by-hop headers are dropped both ways.
func TestGatewayForwardingHeaders(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	spec, _ := json.Marshal(map[string]any{
		"name": "hdr", "image": imageBusybox, "command": []string{"sh", "-c", hdrCommand},
		"port": 8080, "replicas": 1, "resources": map[string]any{"cpu": "100m", "memory": "32Mi"},
		"health":     map[string]any{"tcp": true, "interval": "500ms", "timeout": "500ms", "retries": 2, "start_period": "5s"},
		"stop_grace": "2s", "routes": []string{"hdr.localtest.me"},
	})
	b.mustDeploy(t, string(spec))
	var resp *http.Response
	var body string
	waitFor(t, 20*time.Second, func() (bool, string) {
		resp, body = b.rawGet(t, "hdr.localtest.me", "/cgi-bin/env", "Connection: close")
		return resp.StatusCode == 200 && strings.Contains(body, "GATEWAY_INTERFACE="), fmt.Sprintf("%d %q", resp.StatusCode, body)
	})

	env := func(body string) map[string]string {
		m := map[string]string{}
		for _, line := range strings.Split(body, "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				m[k] = v
			}
		}
		return m
	}

	// With the client's own forwarding headers, request id and hop-by-hop headers.
	resp, body = b.rawGet(t, "hdr.localtest.me", "/cgi-bin/env",
		"X-Forwarded-For: 203.0.113.7",
		"X-Request-Id: e2e-req-1",
		"Connection: keep-alive, X-Secret",
		"X-Secret: do not forward",
		"Keep-Alive: timeout=5",
		"Proxy-Authorization: Basic Zm9vOmJhcg==",
		"TE: trailers",
		"X-Kept: yes",
	)
	if resp.StatusCode != 200 {
		t.Fatalf("GET /cgi-bin/env: %d %q", resp.StatusCode, body)
	}
	e := env(body)
	want := map[string]string{
		"HTTP_HOST":              "hdr.localtest.me",
		"HTTP_X_FORWARDED_FOR":   "203.0.113.7, 127.0.0.1",
		"HTTP_X_FORWARDED_PROTO": "http",
		"HTTP_X_FORWARDED_HOST":  "hdr.localtest.me",
		"HTTP_X_REQUEST_ID":      "e2e-req-1",
		"HTTP_X_KEPT":            "yes",
	}
	for k, v := range want {
		if e[k] != v {
			t.Errorf("the upstream got %s=%q; want %q", k, e[k], v)
		}
	}
	for _, k := range []string{"HTTP_X_SECRET", "HTTP_KEEP_ALIVE", "HTTP_PROXY_AUTHORIZATION", "HTTP_TE"} {
		if v, ok := e[k]; ok {
			t.Errorf("the upstream got the hop-by-hop header %s=%q; want it dropped", k, v)
		}
	}
	if v := e["HTTP_CONNECTION"]; strings.Contains(strings.ToLower(v), "x-secret") {
		t.Errorf("the upstream got Connection: %q; the client's Connection header is hop-by-hop", v)
	}
	if got := resp.Header.Get("X-Request-Id"); got != "e2e-req-1" {
		t.Errorf("response X-Request-Id %q; want the client's e2e-req-1", got)
	}
	if got := resp.Header.Get("X-Up-Kept"); got != "yes" {
		t.Errorf("response X-Up-Kept %q; want the upstream's end-to-end header passed on", got)
	}
	for _, k := range []string{"X-Up-Secret", "Keep-Alive", "Proxy-Authenticate"} {
		if v := resp.Header.Values(k); len(v) > 0 {
			t.Errorf("the client got the upstream's hop-by-hop header %s: %q; want it dropped", k, v)
		}
	}
	if v := resp.Header.Get("Connection"); strings.Contains(strings.ToLower(v), "x-up-secret") {
		t.Errorf("the client got the upstream's Connection: %q", v)
	}

	// Without: the gateway makes the id and returns it.
	resp, body = b.rawGet(t, "hdr.localtest.me", "/cgi-bin/env", "Connection: close")
	e = env(body)
	id := e["HTTP_X_REQUEST_ID"]
	if !regexp.MustCompile(`^[0-9a-f]{16,}$`).MatchString(id) {
		t.Errorf("the upstream got X-Request-Id %q; want a generated hex id", id)
	}
	if got := resp.Header.Get("X-Request-Id"); got != id {
		t.Errorf("response X-Request-Id %q; want the id the upstream got, %q", got, id)
	}
	if e["HTTP_X_FORWARDED_FOR"] != "127.0.0.1" {
		t.Errorf("the upstream got X-Forwarded-For %q; want the client's address 127.0.0.1", e["HTTP_X_FORWARDED_FOR"])
	}

	// An upstream whose header lines end with a bare LF. Clients and
	// proxies commonly accept it (RFC 9112 2.2: a recipient MAY recognise a
	// single LF as a line terminator); curl and Go's net/http do, straight
	// to the container.
	t.Run("bare LF upstream", func(t *testing.T) {
		inst := b.instances(t, "hdr")[0]
		code, direct, err := curl(inst.Status.Address, "/cgi-bin/lf")
		if err != nil || code != 200 || !strings.Contains(direct, "GATEWAY_INTERFACE=") {
			t.Fatalf("GET /cgi-bin/lf straight to the container: %d %q %v", code, direct, err)
		}
		resp, body := b.rawGet(t, "hdr.localtest.me", "/cgi-bin/lf", "Connection: close")
		if resp.StatusCode != 200 || !strings.Contains(body, "GATEWAY_INTERFACE=") || resp.Header.Get("X-Up-Kept") != "yes" {
			t.Errorf("GET /cgi-bin/lf through the gateway: %d %q; want 200 with the script's output, as straight to the container", resp.StatusCode, body)
		}
	})
}

// TestGatewayKilledInstanceUnderLoad: an instance killed behind berth's back
// while a client sends a request every 10ms: no request fails (a request
// that cannot connect goes to another instance; the dead one leaves the
// rotation), and the instance is back in rotation once restarted.
func TestGatewayKilledInstanceUnderLoad(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	b.mustDeploy(t, routedSpec("steady", 3, []string{"steady.localtest.me"}))
	insts := byName(b.waitRoutable(t, "steady", 3))
	b.waitRouted(t, "steady.localtest.me", "steady")
	waitFor(t, 15*time.Second, func() (bool, string) {
		seen, fails := b.sample("steady.localtest.me", 12)
		return len(seen) == 3 && len(fails) == 0, fmt.Sprintf("12 GETs answered by %v; failures %v", seen, fails)
	})

	l := b.startLoad("steady.localtest.me", 10*time.Millisecond)
	time.Sleep(time.Second)
	victim := insts["steady-2"].Status.ContainerID
	killedAt := time.Now()
	if out, err := dockerCLI(30*time.Second, "kill", victim); err != nil {
		l.end()
		t.Fatalf("docker kill: %v: %s", err, out)
	}
	t.Logf("killed steady-2 (%s) at %s", victim[:12], killedAt.Format("15:04:05.000"))
	time.Sleep(4 * time.Second)
	sent, fails, slowest := l.end()
	t.Logf("%d GETs in ~5s, %d failed, slowest %s", sent, len(fails), slowest.Round(time.Millisecond))
	if len(fails) > 0 {
		t.Errorf("%d of %d GETs through the gateway failed while an instance was killed:\n%s", len(fails), sent, strings.Join(fails, "\n"))
	}
	if sent < 100 {
		t.Errorf("only %d GETs were sent in ~5s", sent)
	}

	// Restarted, it gets traffic again.
	waitFor(t, 30*time.Second, func() (bool, string) {
		seen, fails := b.sample("steady.localtest.me", 12)
		return len(seen) == 3 && len(fails) == 0, fmt.Sprintf("12 GETs answered by %v; failures %v; %s", seen, fails, describe(b.instances(t, "steady")))
	})
}

// TestGatewayHostConflict: a second app claiming a host another app owns is
// rejected (409, field routes, naming the owner) and nothing of it is stored;
// the owner keeps the host; removing the owner frees it.
func TestGatewayHostConflict(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	b.mustDeploy(t, routedSpec("owner", 1, []string{"shared.localtest.me"}))

	r := b.deploy(t, routedSpec("thief", 1, []string{"thief.localtest.me", "shared.localtest.me"}))
	if r.code == 0 {
		t.Errorf("deploying a second app for shared.localtest.me succeeded; want it rejected:\n%s", r)
	}
	if out := r.stdout + r.stderr; !strings.Contains(out, "owner") || !strings.Contains(out, "shared.localtest.me") {
		t.Errorf("berth deploy's error does not name the host and its owner app:\n%s", r)
	}

	for _, host := range []string{"shared.localtest.me", "SHARED.LocalTest.me"} {
		spec := routedSpec("thief", 1, []string{"thief.localtest.me", host})
		code, data := b.request(t, "PUT", "/v1/apps/thief", []byte(spec), "application/yaml")
		var ae apiError
		_ = json.Unmarshal(data, &ae)
		if code != 409 || ae.Field != "routes" || !strings.Contains(ae.Error, "owner") || !strings.Contains(strings.ToLower(ae.Error), "shared.localtest.me") {
			t.Errorf("PUT /v1/apps/thief with route %s: %d %s; want 409 with field routes naming the host and app owner", host, code, data)
		}
	}
	// A wildcard covering the host is another host name, not a conflict;
	// the exact name keeps winning at the gateway (see TestGatewayRoutesByHost).

	if code, data := b.request(t, "GET", "/v1/apps/thief", nil, ""); code != 404 {
		t.Errorf("GET /v1/apps/thief: %d %s; want 404: nothing of a rejected app is stored", code, data)
	}
	for _, rt := range b.routes(t) {
		if rt.App != "owner" {
			t.Errorf("GET /v1/routes: %+v; want only owner's shared.localtest.me", rt)
		}
	}
	if evs := b.events(t, "thief"); len(evs) > 0 {
		t.Errorf("events of the rejected app:\n%s", describeEvents(evs))
	}
	time.Sleep(time.Second) // give a wrongly stored app time to get containers
	if cs := containers(t, b.cluster, "berth.app=thief"); len(cs) > 0 {
		t.Errorf("the rejected app has containers: %s", describeContainers(cs))
	}
	b.waitRouted(t, "shared.localtest.me", "owner")
	if resp, body := b.rawGet(t, "thief.localtest.me", "/", "Connection: close"); resp.StatusCode != 404 {
		t.Errorf("Host thief.localtest.me: %d %q; want 404 (the rejected app routes nothing)", resp.StatusCode, body)
	}

	// The rejected deploy claimed none of its hosts: another app may have thief.localtest.me.
	if r := b.deploy(t, routedSpec("third", 1, []string{"thief.localtest.me"}), "--detach"); r.code != 0 {
		t.Errorf("deploying an app for thief.localtest.me (claimed by no stored app) failed:\n%s", r)
	}
	// Once the owner is removed, its host is free.
	if r := b.cli(t, "rm", "owner"); r.code != 0 {
		t.Fatalf("berth rm owner:\n%s", r)
	}
	waitFor(t, 20*time.Second, func() (bool, string) {
		r := b.deploy(t, routedSpec("thief", 1, []string{"shared.localtest.me"}), "--detach")
		return r.code == 0, "deploying thief for shared.localtest.me after owner was removed:\n" + r.String()
	})
}

// TestGatewayIdleAndWake: an app with an idle policy and no requests is
// scaled to zero (containers stopped, kept); 50 concurrent requests wake it
// with a single wake and all get answers from the same containers, started
// again.
func TestGatewayIdleAndWake(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	spec := routedSpec("lazy", 2, []string{"lazy.localtest.me"}, "idle: {stop_after: 3s}\n")
	// Detached: the idle clock starts with the deploy, and a rollout slower
	// than stop_after is idled before it ends (and then berth deploy
	// would wait for it in vain: see the subtest "deploy while idle").
	if r := b.deploy(t, spec, "--detach"); r.code != 0 {
		t.Fatalf("deploy:\n%s", r)
	}
	ids := map[string]string{} // container id -> instance, as first created
	waitFor(t, 30*time.Second, func() (bool, string) {
		insts := b.instances(t, "lazy")
		for _, i := range insts {
			if i.Status.ContainerID != "" {
				ids[i.Status.ContainerID] = i.Name
			}
		}
		return len(insts) == 2 && len(ids) == 2, describe(insts)
	})

	// Idled: berth ps shows idle, the same containers exist, exited.
	start := time.Now()
	waitFor(t, 30*time.Second, func() (bool, string) {
		rows := b.ps(t, "lazy")
		var states []string
		ok := len(rows) == 2
		for _, r := range rows {
			states = append(states, r.Instance+"="+r.State)
			ok = ok && r.State == "idle"
		}
		cs := containers(t, b.cluster, "berth.app=lazy")
		ok = ok && len(cs) == 2
		for _, c := range cs {
			ok = ok && ids[c.ID] == c.Instance && c.State == "exited"
		}
		return ok, fmt.Sprintf("berth ps: %v; docker: %s; want both idle, the containers %v exited", states, describeContainers(cs), ids)
	})
	t.Logf("idle %s after both containers existed", time.Since(start).Round(100*time.Millisecond))
	var app appRecord
	b.getJSON(t, "/v1/apps/lazy", &app)
	if !app.Idled {
		t.Errorf("GET /v1/apps/lazy: idled is false while its instances are idle")
	}
	if n := countEvents(b.events(t, "lazy"), "idled"); n != 1 {
		t.Errorf("%d idled events; want 1", n)
	}
	routesOut := b.cli(t, "routes")
	if routesOut.code != 0 || !strings.HasPrefix(routesOut.stdout, "HOST") ||
		!regexp.MustCompile(`(?m)^lazy\.localtest\.me\s+lazy\s+-\s+idle\s`).MatchString(routesOut.stdout) {
		t.Errorf("berth routes: want a row 'lazy.localtest.me lazy - idle ...':\n%s", routesOut)
	}
	if rt, ok := routeFor(b.routes(t), "lazy.localtest.me"); !ok || !rt.Idle || len(rt.Instances) != 0 || rt.IdleAfter != "3s" {
		t.Errorf("GET /v1/routes: %+v (found %v); want lazy idle, no instances, idle_after 3s", rt, ok)
	}

	// Deploying the same spec again changes nothing: berth deploy says so
	// and returns, whether the app is idle or not.
	t.Run("deploy while idle", func(t *testing.T) {
		start := time.Now()
		r := b.deploy(t, spec, "--timeout", "8s")
		if r.code != 0 || time.Since(start) > 5*time.Second {
			t.Errorf("berth deploy of the unchanged spec of an idled app: exit %d after %s; want exit 0 at once (the app is as specified: scaled to zero by its idle policy):\n%s",
				r.code, time.Since(start).Round(100*time.Millisecond), r)
		}
		var app appRecord
		b.getJSON(t, "/v1/apps/lazy", &app)
		if !app.Idled || app.Revision != 1 {
			t.Fatalf("after an unchanged deploy: idled %v, revision %d; want still idled at revision 1", app.Idled, app.Revision)
		}
	})

	// 50 requests at once: all held, one wake, all answered.
	const n = 50
	var wg sync.WaitGroup
	var okCount atomic.Int32
	results := make([]string, n)
	took := make([]time.Duration, n)
	gate := make(chan struct{})
	client := &http.Client{Timeout: 45 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: n}}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			r, err := b.gwGetWith(client, "lazy.localtest.me", "/")
			took[i] = r.took
			switch {
			case err != nil:
				results[i] = err.Error()
			case r.code != 200 || !strings.HasPrefix(servedBy(r.body), "lazy-"):
				results[i] = fmt.Sprintf("%d %q", r.code, r.body)
			default:
				okCount.Add(1)
			}
		}()
	}
	wakeStart := time.Now()
	close(gate)
	wg.Wait()
	slowest := time.Duration(0)
	for _, d := range took {
		slowest = max(slowest, d)
	}
	t.Logf("50 concurrent GETs on the idle app: %d answered 200, slowest after %s (all done %s after the first was sent)", okCount.Load(), slowest.Round(time.Millisecond), time.Since(wakeStart).Round(time.Millisecond))
	if okCount.Load() != n {
		var bad []string
		for i, r := range results {
			if r != "" {
				bad = append(bad, fmt.Sprintf("#%d: %s", i, r))
			}
		}
		t.Errorf("%d of %d GETs on the idled app failed:\n%s", len(bad), n, strings.Join(bad, "\n"))
	}

	// The same containers, running again.
	cs := containers(t, b.cluster, "berth.app=lazy")
	running := 0
	for _, c := range cs {
		if ids[c.ID] != c.Instance {
			t.Errorf("container %s of %s is not one of those before the idle %v: recreated, not started", c.ID[:12], c.Instance, ids)
		}
		if c.State == "running" {
			running++
		}
	}
	if len(cs) != 2 || running == 0 {
		t.Errorf("after the wake: %s; want the 2 containers of before, running", describeContainers(cs))
	}
	for _, i := range b.instances(t, "lazy") {
		if ids[i.Status.ContainerID] != i.Name {
			t.Errorf("instance %s has container %s after the wake; before the idle it had another: %v", i.Name, i.Status.ContainerID, ids)
		}
		if i.Status.Restarts != 0 {
			t.Logf("note: %s counts %d restarts after a wake", i.Name, i.Status.Restarts)
		}
	}

	evs := b.events(t, "lazy")
	if got := countEvents(evs, "woken"); got != 1 {
		t.Errorf("%d woken events for 50 concurrent requests; want exactly 1:\n%s", got, describeEvents(evs))
	}
	text := b.metrics(t)
	if v, ok := metricValue(text, "berth_gateway_wakes_total", `app="lazy"`); !ok || v != 1 {
		t.Errorf("GET /metrics: berth_gateway_wakes_total for lazy is %v (found %v); want 1:\n%s", v, ok, metricLines(text, "berth_gateway_wake"))
	}
	if v, ok := metricValue(text, "berth_gateway_requests_total", `app="lazy",code="200"`); !ok || v < n {
		t.Errorf("GET /metrics: berth_gateway_requests_total for lazy/200 is %v (found %v); want at least %d", v, ok, n)
	}
}

// TestGatewayWakeTimeout: a request for an idled app that does not get
// healthy within wake_timeout is answered 503 with Retry-After once the
// timeout has passed.
func TestGatewayWakeTimeout(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	// The health check asks for a path the demo does not have: the app
	// never gets healthy, so no wake can succeed.
	spec := strings.Replace(routedSpec("sleepy", 1, []string{"sleepy.localtest.me"}, "idle: {stop_after: 2s, wake_timeout: 2s}\n"),
		"http: /healthz", "http: /never-healthy", 1)
	if r := b.deploy(t, spec, "--detach"); r.code != 0 {
		t.Fatalf("deploy:\n%s", r)
	}
	waitFor(t, 30*time.Second, func() (bool, string) {
		var app appRecord
		b.getJSON(t, "/v1/apps/sleepy", &app)
		insts := b.instances(t, "sleepy")
		return app.Idled && len(insts) == 1 && insts[0].Status.State == "idle", fmt.Sprintf("idled %v; %s", app.Idled, describe(insts))
	})

	r, err := b.gwGet("sleepy.localtest.me", "/")
	if err != nil {
		t.Fatalf("GET through the gateway: %v", err)
	}
	t.Logf("answer after %s: %d %q, Retry-After %q", r.took.Round(time.Millisecond), r.code, r.body, r.header.Get("Retry-After"))
	if r.code != 503 {
		t.Errorf("GET on an app that cannot wake: %d %q; want 503", r.code, r.body)
	}
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 {
		t.Errorf("Retry-After %q; want a positive number of seconds", r.header.Get("Retry-After"))
	}
	if r.took < 1800*time.Millisecond || r.took > 6*time.Second {
		t.Errorf("the 503 came after %s; want it once the wake_timeout of 2s has passed", r.took.Round(time.Millisecond))
	}
	if !strings.Contains(r.body, "sleepy") {
		t.Errorf("503 body %q does not name the app", r.body)
	}
	if got := countEvents(b.events(t, "sleepy"), "woken"); got != 1 {
		t.Errorf("%d woken events; want 1 (the gateway asked for a wake)", got)
	}
}

// TestGatewayNoHealthyInstance: an app without an idle policy and no
// healthy instance (scaled to 0) is answered 503 at once.
func TestGatewayNoHealthyInstance(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	b.mustDeploy(t, routedSpec("plain", 1, []string{"plain.localtest.me"}))
	b.waitRouted(t, "plain.localtest.me", "plain")
	if r := b.cli(t, "scale", "plain", "0"); r.code != 0 {
		t.Fatalf("berth scale plain 0:\n%s", r)
	}
	waitFor(t, 20*time.Second, func() (bool, string) {
		r, err := b.gwGet("plain.localtest.me", "/")
		if err != nil {
			return false, err.Error()
		}
		return r.code != 200, fmt.Sprintf("%d %q", r.code, r.body)
	})
	for range 5 {
		r, err := b.gwGet("plain.localtest.me", "/")
		if err != nil {
			t.Fatalf("GET through the gateway: %v", err)
		}
		if r.code != 503 || !strings.Contains(r.body, "plain") || r.took > time.Second {
			t.Errorf("GET on an app scaled to 0: %d %q after %s; want 503 naming the app at once", r.code, r.body, r.took.Round(time.Millisecond))
		}
	}
	if got := countEvents(b.events(t, "plain"), "woken"); got != 0 {
		t.Errorf("%d woken events for an app without an idle policy", got)
	}
	if rt, ok := routeFor(b.routes(t), "plain.localtest.me"); !ok || len(rt.Instances) != 0 || rt.Idle {
		t.Errorf("GET /v1/routes: %+v (found %v); want plain with no instances, not idle", rt, ok)
	}
}

// TestGatewayFollowsScale: the gateway's upstreams follow berth scale
// 1 -> 3 -> 1, and no request fails while instances are retired.
func TestGatewayFollowsScale(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	b.mustDeploy(t, routedSpec("flex", 1, []string{"flex.localtest.me"}))
	b.waitRouted(t, "flex.localtest.me", "flex")

	check := func(want int) {
		t.Helper()
		waitFor(t, 20*time.Second, func() (bool, string) {
			seen, fails := b.sample("flex.localtest.me", 15)
			rt, _ := routeFor(b.routes(t), "flex.localtest.me")
			return len(seen) == want && len(fails) == 0 && len(rt.Instances) == want,
				fmt.Sprintf("15 GETs answered by %v, failures %v; GET /v1/routes lists %v; want %d instances", seen, fails, rt.Instances, want)
		})
	}
	check(1)
	if r := b.cli(t, "scale", "flex", "3"); r.code != 0 {
		t.Fatalf("berth scale flex 3:\n%s", r)
	}
	check(3)

	// An instance that turns unhealthy gets no more requests: GET /healthz
	// through the gateway never reaches the sick one (it answers 500).
	sick := byName(b.instances(t, "flex"))["flex-2"]
	if code, body, err := curl(sick.Status.Address, "/sick"); err != nil || code != 200 {
		t.Fatalf("GET /sick on flex-2 (%s): %d %q %v", sick.Status.Address, code, body, err)
	}
	sickAt := time.Now()
	waitFor(t, 10*time.Second, func() (bool, string) {
		for i := range 30 {
			r, err := b.gwGet("flex.localtest.me", "/healthz")
			if err != nil || r.code != 200 {
				return false, fmt.Sprintf("GET /healthz #%d through the gateway: %d %q %v", i+1, r.code, r.body, err)
			}
		}
		return true, ""
	})
	code, _, _ := curl(sick.Status.Address, "/healthz")
	t.Logf("the gateway stopped sending to the sick flex-2 within %s (flex-2 itself answers /healthz with %d now)", time.Since(sickAt).Round(100*time.Millisecond), code)
	check(3) // replaced

	// Scaling down: requests in flight on the retired instances finish, and
	// no request fails meanwhile.
	type slowResult struct {
		r   gwResp
		err error
	}
	slow := make(chan slowResult, 6)
	for range 6 {
		go func() {
			r, err := b.gwGet("flex.localtest.me", "/slow?ms=2000")
			slow <- slowResult{r, err}
		}()
	}
	time.Sleep(300 * time.Millisecond) // all six in flight, spread over the three instances
	l := b.startLoad("flex.localtest.me", 10*time.Millisecond)
	r := b.cli(t, "scale", "flex", "1")
	if r.code != 0 {
		l.end()
		t.Fatalf("berth scale flex 1:\n%s", r)
	}
	check(1)
	time.Sleep(time.Second)
	for i := range 6 {
		sr := <-slow
		if sr.err != nil || sr.r.code != 200 || strings.TrimSpace(sr.r.body) != "slept 2000ms" {
			t.Errorf("slow request #%d in flight during the scale down: %d %q %v; want 200 slept 2000ms", i+1, sr.r.code, sr.r.body, sr.err)
		}
	}
	sent, fails, slowest := l.end()
	t.Logf("%d GETs during the scale down, %d failed, slowest %s", sent, len(fails), slowest.Round(time.Millisecond))
	if len(fails) > 0 {
		t.Errorf("%d of %d GETs failed while flex was scaled from 3 to 1:\n%s", len(fails), sent, strings.Join(fails, "\n"))
	}
}
