package gateway

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type metrics struct {
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	wakes     *prometheus.CounterVec
	wakeTime  *prometheus.HistogramVec
	upstreams *prometheus.GaugeVec
	handler   http.Handler
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_gateway_requests_total", Help: "Requests by app and status code.",
		}, []string{"app", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "berth_gateway_request_duration_seconds", Help: "Time to the response's headers, by app.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"app"}),
		wakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_gateway_wakes_total", Help: "Wakes of idled apps asked for.",
		}, []string{"app"}),
		wakeTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "berth_gateway_wake_duration_seconds", Help: "From asking for a wake to the app having a healthy instance.",
			Buckets: []float64{.1, .25, .5, 1, 2, 5, 10, 30, 60},
		}, []string{"app"}),
		upstreams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_gateway_upstreams", Help: "Healthy instances the gateway routes to, by app.",
		}, []string{"app"}),
	}
	reg.MustRegister(m.requests, m.latency, m.wakes, m.wakeTime, m.upstreams)
	if g, ok := reg.(prometheus.Gatherer); ok {
		m.handler = promhttp.HandlerFor(g, promhttp.HandlerOpts{})
	} else {
		m.handler = promhttp.Handler()
	}
	return m
}
