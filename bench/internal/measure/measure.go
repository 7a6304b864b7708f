// Package measure holds what the in-process benches (bench/tasks,
// bench/placement) read of the process they run in: embedded etcd's own
// counters and disk latencies, CPU time, API requests by route, and the
// warnings the components log.
package measure

import (
	"fmt"
	"io"
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

// EtcdCounters reads the embedded etcd's own counters (it registers them
// with the default Prometheus registry).
func EtcdCounters() map[string]float64 {
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

// EtcdLatencies reads etcd's histograms of WAL fsync and backend commit
// (count and sum of seconds).
func EtcdLatencies() map[string][2]float64 {
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

// LatencyDelta says how many WAL fsyncs and backend commits etcd made
// between two readings of EtcdLatencies, and their mean.
func LatencyDelta(before, after map[string][2]float64) string {
	var parts []string
	for _, k := range []string{"etcd_disk_wal_fsync_duration_seconds", "etcd_disk_backend_commit_duration_seconds"} {
		n, sum := after[k][0]-before[k][0], after[k][1]-before[k][1]
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f, mean %s", strings.TrimSuffix(strings.TrimPrefix(k, "etcd_disk_"), "_duration_seconds"), n, Ms(time.Duration(sum/n*float64(time.Second)))))
		}
	}
	return strings.Join(parts, "; ")
}

// CPUTime is the user and system time of this process so far.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// EtcdDelta is after - before of EtcdCounters, without the etcd_ prefix.
func EtcdDelta(before, after map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		out[strings.TrimPrefix(k, "etcd_")] = v - before[k]
	}
	return out
}

// RouteCounts counts API requests by method and route (ids collapsed).
// LogKey is a slog text line cut down to its level and message
// ("level=WARN \"apply request took too long\""): what WarnLog counts by.
func LogKey(line string) string {
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
	return key
}

// NewRouteCounts starts counting.
func NewRouteCounts() *RouteCounts { return &RouteCounts{m: map[string]int{}} }

type RouteCounts struct {
	mu    sync.Mutex
	m     map[string]int
	conns int
}

func (rc *RouteCounts) ConnState(_ net.Conn, st http.ConnState) {
	if st == http.StateNew {
		rc.mu.Lock()
		rc.conns++
		rc.mu.Unlock()
	}
}

func (rc *RouteCounts) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Method + " " + Route(r.URL.Path)
		if r.URL.Query().Get("watch") == "true" {
			key += " (watch)"
		}
		rc.mu.Lock()
		rc.m[key]++
		rc.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}

func (rc *RouteCounts) Reset() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.m, rc.conns = map[string]int{}, 0
}

func (rc *RouteCounts) Snapshot() (map[string]int, int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return maps.Clone(rc.m), rc.conns
}

// Route collapses the names in a path: /v1/tasks/{}/attempts/{}/log.
func Route(path string) string {
	parts := strings.Split(path, "/")
	for i, p := range parts {
		if _, err := strconv.Atoi(p); err == nil || api.ValidTaskID(p) ||
			i > 0 && slices.Contains([]string{"nodes", "apps", "instances", "queues", "schedules", "tokens"}, parts[i-1]) {
			parts[i] = "{}"
		}
	}
	return strings.Join(parts, "/")
}

// WarnLog keeps the warnings and errors the components log, by message.
type WarnLog struct {
	// Echo, when set, also gets every line (a bench's -v).
	Echo io.Writer

	mu    sync.Mutex
	count map[string]int
	order []string
}

func (w *WarnLog) Write(p []byte) (int, error) {
	key := LogKey(string(p))
	if w.Echo != nil {
		_, _ = w.Echo.Write(p)
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

func (w *WarnLog) Summary() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var parts []string
	for _, k := range w.order {
		parts = append(parts, fmt.Sprintf("%dx %s", w.count[k], strings.TrimSpace(k)))
	}
	return strings.Join(parts, "; ")
}

// Ms prints a duration with the precision that matters at its size.
func Ms(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.0fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}

// start is when the bench process started: Logf stamps its lines from it.
var start = time.Now()

// Logf writes a progress line to stderr, stamped with the seconds since
// the bench started.
func Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}

// LoadAvg is the machine's one-minute load average ("?" when unknown):
// the benches print it, the machines being shared.
func LoadAvg() string {
	load, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(load)); len(f) > 0 {
		return f[0]
	}
	return "?"
}
