package main

import (
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"berth/api"
)

// The helpers below are those of bench/tasks (a main package of its own).

// etcdCounters reads the embedded etcd's own counters (it registers them
// with the default Prometheus registry).
func etcdCounters() map[string]float64 {
	out := map[string]float64{}
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		return out
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "etcd_server_proposals_applied_total", "etcd_mvcc_txn_total", "etcd_mvcc_put_total",
			"etcd_mvcc_range_total", "etcd_mvcc_delete_total":
			for _, m := range mf.GetMetric() {
				switch {
				case m.Counter != nil:
					out[mf.GetName()] += m.Counter.GetValue()
				case m.Gauge != nil:
					out[mf.GetName()] += m.Gauge.GetValue()
				}
			}
		}
	}
	return out
}

// etcdLatencies reads etcd's histograms of WAL fsync and backend commit
// (count and sum of seconds).
func etcdLatencies() map[string][2]float64 {
	out := map[string][2]float64{}
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		return out
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "etcd_disk_wal_fsync_duration_seconds", "etcd_disk_backend_commit_duration_seconds":
			for _, m := range mf.GetMetric() {
				if h := m.GetHistogram(); h != nil {
					v := out[mf.GetName()]
					out[mf.GetName()] = [2]float64{v[0] + float64(h.GetSampleCount()), v[1] + h.GetSampleSum()}
				}
			}
		}
	}
	return out
}

func latencyDelta(before, after map[string][2]float64) string {
	var parts []string
	for _, k := range []string{"etcd_disk_wal_fsync_duration_seconds", "etcd_disk_backend_commit_duration_seconds"} {
		n, sum := after[k][0]-before[k][0], after[k][1]-before[k][1]
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f, mean %s", strings.TrimSuffix(strings.TrimPrefix(k, "etcd_disk_"), "_duration_seconds"), n, ms(time.Duration(sum/n*float64(time.Second)))))
		}
	}
	return strings.Join(parts, "; ")
}

// cpuTime is the user and system time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func etcdDelta(before, after map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		out[strings.TrimPrefix(k, "etcd_")] = v - before[k]
	}
	return out
}

// routeCounts counts API requests by method and route (ids collapsed).
type routeCounts struct {
	mu    sync.Mutex
	m     map[string]int
	conns int
}

func (rc *routeCounts) connState(_ net.Conn, st http.ConnState) {
	if st == http.StateNew {
		rc.mu.Lock()
		rc.conns++
		rc.mu.Unlock()
	}
}

func (rc *routeCounts) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Method + " " + route(r.URL.Path)
		if r.URL.Query().Get("watch") == "true" {
			key += " (watch)"
		}
		rc.mu.Lock()
		rc.m[key]++
		rc.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}

func (rc *routeCounts) reset() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.m, rc.conns = map[string]int{}, 0
}

func (rc *routeCounts) snapshot() (map[string]int, int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return maps.Clone(rc.m), rc.conns
}

// route collapses the names in a path: /v1/tasks/{}/attempts/{}/log.
func route(path string) string {
	parts := strings.Split(path, "/")
	for i, p := range parts {
		if _, err := strconv.Atoi(p); err == nil || api.ValidTaskID(p) ||
			i > 0 && slices.Contains([]string{"nodes", "apps", "instances", "queues", "schedules", "tokens"}, parts[i-1]) {
			parts[i] = "{}"
		}
	}
	return strings.Join(parts, "/")
}

// warnLog keeps the warnings and errors the components log, by message.
type warnLog struct {
	mu    sync.Mutex
	count map[string]int
	order []string
}

func (w *warnLog) Write(p []byte) (int, error) {
	line := string(p)
	key := line
	if i := strings.Index(line, "level="); i >= 0 {
		key = line[i:]
	}
	if i := strings.Index(key, " msg="); i >= 0 {
		msg := key[i+5:]
		if strings.HasPrefix(msg, `"`) {
			if j := strings.Index(msg[1:], `"`); j >= 0 {
				msg = msg[:j+2]
			}
		} else if j := strings.IndexByte(msg, ' '); j >= 0 {
			msg = msg[:j]
		}
		key = key[:i] + " " + strings.TrimSpace(msg)
	}
	if *verbose {
		os.Stderr.Write(p)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.count == nil {
		w.count = map[string]int{}
	}
	if w.count[key] == 0 {
		w.order = append(w.order, key)
	}
	w.count[key]++
	return len(p), nil
}

func (w *warnLog) summary() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var parts []string
	for _, k := range w.order {
		parts = append(parts, fmt.Sprintf("%dx %s", w.count[k], strings.TrimSpace(k)))
	}
	return strings.Join(parts, "; ")
}
