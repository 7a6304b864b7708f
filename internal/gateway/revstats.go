package gateway

// Per-revision traffic numbers: what the proxy sent to each revision of an
// app, counted with atomics on the request path and read (for
// RevisionStats and Prometheus) by copying them.

import (
	"cmp"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// LatencyBuckets are the upper bounds, in seconds, of RevisionStats.Buckets
// (the last bucket, one more than these, counts everything slower).
var LatencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// nLatency is len(LatencyBuckets).
const nLatency = 15

// latencySeconds and latencyNanos are LatencyBuckets as they were at
// start: the counting does not depend on the exported slice.
var latencySeconds, latencyNanos = func() ([nLatency]float64, [nLatency]int64) {
	var s [nLatency]float64
	var n [nLatency]int64
	if len(LatencyBuckets) != nLatency {
		panic("gateway: LatencyBuckets and nLatency disagree")
	}
	for i, b := range LatencyBuckets {
		s[i], n[i] = b, int64(b*float64(time.Second))
	}
	return s, n
}()

// RevisionStats are the requests the proxy sent to one revision of an app.
type RevisionStats struct {
	App             string
	Revision        int64
	Requests        int64   // answered (by the upstream or by the gateway after choosing this revision)
	Errors          int64   // of those: status >= 500 (the upstream's 5xx and the gateway's 502/503/504)
	ConnectFailures int64   // connects to its upstreams that failed (a retried request counts its failed connect here too)
	Buckets         []int64 // len(LatencyBuckets)+1 counts of time to response header, not cumulative
}

// RevisionStats returns the numbers of every (app, revision) seen since the proxy started, sorted by app then revision.
func (p *Proxy) RevisionStats() []RevisionStats {
	snaps := p.m.revTable.snapshot()
	out := make([]RevisionStats, len(snaps))
	for i, s := range snaps {
		out[i] = s.RevisionStats
	}
	return out
}

// revKey names one revision of one app.
type revKey struct {
	app string
	rev int64
}

// revCounters are one revision's numbers. The request path only adds to
// them (atomically); a table's revisions point at them, and a new table
// gets the same ones for the same (app, revision).
type revCounters struct {
	key     revKey
	classes [5]atomic.Int64 // by status class: 1xx (and below), 2xx, 3xx, 4xx, 5xx (and above)
	connect atomic.Int64    // connect failures
	buckets [nLatency + 1]atomic.Int64
	nanos   atomic.Int64 // sum of the latencies counted in buckets
}

// observe counts a request answered with code after d.
func (c *revCounters) observe(code int, d time.Duration) {
	class := code/100 - 1
	class = max(0, min(class, len(c.classes)-1))
	c.classes[class].Add(1)
	n := int64(d)
	b := 0
	for b < nLatency && n > latencyNanos[b] {
		b++
	}
	c.buckets[b].Add(1)
	c.nanos.Add(n)
}

func (c *revCounters) connectFailed() { c.connect.Add(1) }

// revSnapshot is a copy of revCounters.
type revSnapshot struct {
	RevisionStats
	classes [5]int64
	seconds float64
}

func (c *revCounters) snapshot() revSnapshot {
	s := revSnapshot{RevisionStats: RevisionStats{
		App:             c.key.app,
		Revision:        c.key.rev,
		ConnectFailures: c.connect.Load(),
		Buckets:         make([]int64, nLatency+1),
	}}
	for i := range c.buckets {
		s.Buckets[i] = c.buckets[i].Load()
	}
	for i := range c.classes {
		s.classes[i] = c.classes[i].Load()
		s.Requests += s.classes[i]
	}
	s.Errors = s.classes[4]
	s.seconds = time.Duration(c.nanos.Load()).Seconds()
	return s
}

// revTable holds the counters of every (app, revision) a proxy has routed.
type revTable struct {
	mu sync.Mutex
	m  map[revKey]*revCounters
}

// get returns the counters of (app, rev), made on first use. It is called
// when a table is set, never per request.
func (t *revTable) get(app string, rev int64) *revCounters {
	k := revKey{app, rev}
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.m[k]
	if c == nil {
		if t.m == nil {
			t.m = map[revKey]*revCounters{}
		}
		c = &revCounters{key: k}
		t.m[k] = c
	}
	return c
}

// snapshot copies all the counters, sorted by app then revision.
func (t *revTable) snapshot() []revSnapshot {
	t.mu.Lock()
	all := make([]*revCounters, 0, len(t.m))
	for _, c := range t.m {
		all = append(all, c)
	}
	t.mu.Unlock()
	out := make([]revSnapshot, len(all))
	for i, c := range all {
		out[i] = c.snapshot()
	}
	slices.SortFunc(out, func(a, b revSnapshot) int {
		return cmp.Or(cmp.Compare(a.App, b.App), cmp.Compare(a.Revision, b.Revision))
	})
	return out
}

// revCollector exports the revision counters of the proxies of one
// registry (a second proxy on the same registry adds its own to the
// first's collector; their numbers are summed).
type revCollector struct {
	requests, connects, latency *prometheus.Desc

	mu     sync.Mutex
	tables []*revTable
}

var classLabels = [5]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

func newRevCollector() *revCollector {
	return &revCollector{
		requests: prometheus.NewDesc("berth_gateway_revision_requests_total",
			"Requests answered for a revision of an app, by status class (the gateway's own errors after choosing the revision included).",
			[]string{"app", "revision", "class"}, nil),
		connects: prometheus.NewDesc("berth_gateway_revision_connect_failures_total",
			"Failed connects to the upstreams of a revision of an app.",
			[]string{"app", "revision"}, nil),
		latency: prometheus.NewDesc("berth_gateway_revision_request_duration_seconds",
			"Time from a request to its response header, by revision of an app.",
			[]string{"app", "revision"}, nil),
	}
}

func (c *revCollector) add(t *revTable) {
	c.mu.Lock()
	c.tables = append(c.tables, t)
	c.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (c *revCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.requests
	ch <- c.connects
	ch <- c.latency
}

// Collect implements prometheus.Collector.
func (c *revCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	tables := slices.Clone(c.tables)
	c.mu.Unlock()
	var all []revSnapshot
	for _, t := range tables {
		all = append(all, t.snapshot()...)
	}
	if len(tables) > 1 {
		all = mergeSnapshots(all)
	}
	for _, s := range all {
		rev := strconv.FormatInt(s.Revision, 10)
		for i, n := range s.classes {
			if n == 0 && i == 0 {
				continue // 1xx (WebSocket upgrades) only once there is one
			}
			ch <- prometheus.MustNewConstMetric(c.requests, prometheus.CounterValue, float64(n), s.App, rev, classLabels[i])
		}
		ch <- prometheus.MustNewConstMetric(c.connects, prometheus.CounterValue, float64(s.ConnectFailures), s.App, rev)
		buckets := make(map[float64]uint64, nLatency)
		var cum uint64
		for i, b := range latencySeconds {
			cum += uint64(s.Buckets[i])
			buckets[b] = cum
		}
		count := cum + uint64(s.Buckets[nLatency])
		ch <- prometheus.MustNewConstHistogram(c.latency, count, s.seconds, buckets, s.App, rev)
	}
}

// mergeSnapshots sums the snapshots of the same (app, revision).
func mergeSnapshots(all []revSnapshot) []revSnapshot {
	slices.SortStableFunc(all, func(a, b revSnapshot) int {
		return cmp.Or(cmp.Compare(a.App, b.App), cmp.Compare(a.Revision, b.Revision))
	})
	out := all[:0]
	for _, s := range all {
		if n := len(out); n > 0 && out[n-1].App == s.App && out[n-1].Revision == s.Revision {
			o := &out[n-1]
			o.Requests += s.Requests
			o.Errors += s.Errors
			o.ConnectFailures += s.ConnectFailures
			o.seconds += s.seconds
			for i := range o.classes {
				o.classes[i] += s.classes[i]
			}
			for i := range o.Buckets {
				o.Buckets[i] += s.Buckets[i]
			}
			continue
		}
		out = append(out, s)
	}
	return out
}
