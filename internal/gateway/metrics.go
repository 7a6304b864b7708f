package gateway

import (
	"errors"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the gateway's Prometheus metrics.
type metrics struct {
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	wakes     *prometheus.CounterVec
	wakeTime  *prometheus.HistogramVec
	upstreams *prometheus.GaugeVec
	revs      *revCollector // the registry's, shared by its proxies
	revTable  *revTable     // this proxy's revision counters
	handler   http.Handler

	mu   sync.Mutex
	apps map[string]*appMetrics
	none *appMetrics // requests for hosts no app is routed for
}

// appMetrics caches one app's metric children, so that a request costs no
// label lookup.
type appMetrics struct {
	app     string
	m       *metrics
	latency prometheus.Observer
	codes   [600]atomic.Pointer[counter]
}

type counter struct{ prometheus.Counter }

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_gateway_requests_total",
			Help: "Requests by app and status code (app=\"\": no app is routed for the host).",
		}, []string{"app", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "berth_gateway_request_duration_seconds",
			Help:    "Time from a request to its response header (including any wait for a wake), by app.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"app"}),
		wakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_gateway_wakes_total",
			Help: "Wakes of idled apps asked for, by app.",
		}, []string{"app"}),
		wakeTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "berth_gateway_wake_duration_seconds",
			Help:    "Time from asking for a wake to the app having a healthy instance, by app.",
			Buckets: []float64{.1, .25, .5, 1, 2, 3, 5, 10, 20, 30, 60, 120},
		}, []string{"app"}),
		upstreams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_gateway_upstreams",
			Help: "Healthy instances the gateway routes to, by app.",
		}, []string{"app"}),
		revs:     newRevCollector(),
		revTable: &revTable{},
		apps:     map[string]*appMetrics{},
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m.requests = register(reg, m.requests)
	m.latency = register(reg, m.latency)
	m.wakes = register(reg, m.wakes)
	m.wakeTime = register(reg, m.wakeTime)
	m.upstreams = register(reg, m.upstreams)
	m.revs = register(reg, m.revs)
	m.revs.add(m.revTable)
	g, ok := reg.(prometheus.Gatherer)
	if !ok {
		// Serve our own metrics at least.
		r := prometheus.NewRegistry()
		own := newRevCollector()
		own.add(m.revTable)
		r.MustRegister(m.requests, m.latency, m.wakes, m.wakeTime, m.upstreams, own)
		g = r
	}
	m.handler = promhttp.HandlerFor(g, promhttp.HandlerOpts{})
	m.none = m.app("")
	return m
}

// register registers c on reg; when an equal collector is registered
// already (a second proxy on the same registry), that one is used.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if old, ok := are.ExistingCollector.(C); ok {
			return old
		}
	}
	panic("gateway: registering metrics: " + err.Error())
}

// app returns the metrics of app, kept across tables.
func (m *metrics) app(app string) *appMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	am := m.apps[app]
	if am == nil {
		am = &appMetrics{app: app, m: m, latency: m.latency.WithLabelValues(app)}
		m.apps[app] = am
	}
	return am
}

// observe counts a request answered with code after d.
func (am *appMetrics) observe(code int, d time.Duration) {
	am.counter(code).Inc()
	am.latency.Observe(d.Seconds())
}

func (am *appMetrics) counter(code int) prometheus.Counter {
	if code < 0 || code >= len(am.codes) {
		return am.m.requests.WithLabelValues(am.app, strconv.Itoa(code))
	}
	if c := am.codes[code].Load(); c != nil {
		return c.Counter
	}
	c := &counter{am.m.requests.WithLabelValues(am.app, strconv.Itoa(code))}
	am.codes[code].Store(c)
	return c.Counter
}

func (m *metrics) unknownHost(d time.Duration) { m.none.observe(404, d) }
