package gateway

import (
	"io"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func scrape(t *testing.T, p *Proxy) string {
	t.Helper()
	rec := httptest.NewRecorder()
	p.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("metrics: %d", rec.Code)
	}
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

func TestMetrics(t *testing.T) {
	var p *Proxy
	upAddr := serveUp(t, (&named{name: "up"}).ServeHTTP)
	w := &fakeWaker{onWake: func(string) {
		time.Sleep(50 * time.Millisecond)
		p.SetTable(idleTable([]string{upAddr}, 0))
	}}
	p, addr := startProxy(t, w)
	p.SetTable(NewTable([]AppRoutes{
		{App: "hello", Hosts: []string{"hello.test"}, Upstreams: []string{upAddr, deadAddr(t)}},
		{App: "sleepy", Hosts: []string{"sleepy.test"}, IdleEnabled: true},
	}))
	for range 3 {
		get(t, addr, "hello.test")
	}
	get(t, addr, "nope.test")
	get(t, addr, "sleepy.test") // woken: upstreams of hello become just upAddr

	out := scrape(t, p)
	for _, want := range []string{
		`berth_gateway_requests_total{app="hello",code="200"} 3`,
		`berth_gateway_requests_total{app="",code="404"} 1`,
		`berth_gateway_requests_total{app="sleepy",code="200"} 1`,
		`berth_gateway_request_duration_seconds_count{app="hello"} 3`,
		`berth_gateway_request_duration_seconds_bucket{app="hello",le="+Inf"} 3`,
		`berth_gateway_wakes_total{app="sleepy"} 1`,
		`berth_gateway_wake_duration_seconds_count{app="sleepy"} 1`,
		`berth_gateway_upstreams{app="sleepy"} 1`,
		`berth_gateway_upstreams{app="awake"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(out, `berth_gateway_upstreams{app="hello"}`) {
		t.Error("upstreams gauge kept for an app no longer routed")
	}
	if m := regexp.MustCompile(`berth_gateway_wake_duration_seconds_sum\{app="sleepy"\} (\S+)`).FindStringSubmatch(out); m == nil || m[1] == "0" {
		t.Errorf("wake duration: %v", m)
	}
}

func TestMetricsSharedRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := NewProxy(nil, reg, nil)
	b := NewProxy(nil, reg, nil) // a second proxy on the same registry shares the collectors
	a.SetTable(NewTable([]AppRoutes{{App: "x", Hosts: []string{"x.test"}}}))
	b.SetTable(NewTable([]AppRoutes{{App: "y", Hosts: []string{"y.test"}}}))
	out := scrape(t, b)
	if !strings.Contains(out, `berth_gateway_upstreams{app="x"} 0`) || !strings.Contains(out, `berth_gateway_upstreams{app="y"} 0`) {
		t.Fatal(out)
	}
	// A Registerer that cannot gather: the proxy serves its own.
	c := NewProxy(nil, prometheus.WrapRegistererWithPrefix("x_", prometheus.NewRegistry()), nil)
	c.SetTable(NewTable([]AppRoutes{{App: "z", Hosts: []string{"z.test"}}}))
	if out := scrape(t, c); !strings.Contains(out, `berth_gateway_upstreams{app="z"} 0`) {
		t.Fatal(out)
	}
}
