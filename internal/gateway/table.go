// Package gateway is berth's HTTP entry point: it routes requests by Host to
// the healthy instances of apps, holds requests for idled apps while they
// are woken, and exposes Prometheus metrics. The table it routes by is fed
// from outside (see Follower) and swapped atomically.
package gateway

import (
	"net"
	"sort"
	"strings"
	"time"
)

// AppRoutes is one app as the gateway sees it.
type AppRoutes struct {
	App         string
	Hosts       []string      // "hello.localtest.me" (exact) or "*.hello.test" (any name under hello.test)
	Upstreams   []string      // host:port of the app's healthy instances
	IdleEnabled bool          // the app scales to zero and can be woken
	Idle        bool          // the app is idled right now
	WakeTimeout time.Duration // how long a request waits for a wake (default 30s)
	Timeout     time.Duration // per-request upstream timeout (0: none)
}

// Table is an immutable routing snapshot.
type Table struct {
	exact    map[string]*AppRoutes
	wildcard []wildcardRoute // longest suffix first
	apps     []AppRoutes
}

type wildcardRoute struct {
	suffix string // ".hello.test"
	app    *AppRoutes
}

// NewTable indexes apps by host.
func NewTable(apps []AppRoutes) *Table {
	t := &Table{exact: map[string]*AppRoutes{}, apps: apps}
	for i := range apps {
		a := &t.apps[i]
		for _, h := range a.Hosts {
			h = strings.ToLower(h)
			if strings.HasPrefix(h, "*.") {
				t.wildcard = append(t.wildcard, wildcardRoute{suffix: h[1:], app: a})
			} else {
				t.exact[h] = a
			}
		}
	}
	sort.SliceStable(t.wildcard, func(i, j int) bool { return len(t.wildcard[i].suffix) > len(t.wildcard[j].suffix) })
	return t
}

// Lookup finds the app for a Host header: port stripped, case-insensitive,
// exact names before wildcards, the longest wildcard first.
func (t *Table) Lookup(host string) (*AppRoutes, bool) {
	host = normalizeHost(host)
	if a, ok := t.exact[host]; ok {
		return a, true
	}
	for _, w := range t.wildcard {
		if len(host) > len(w.suffix) && strings.HasSuffix(host, w.suffix) {
			return w.app, true
		}
	}
	return nil, false
}

// Apps lists the table's apps.
func (t *Table) Apps() []AppRoutes { return t.apps }

func normalizeHost(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(host, ".")
	for i := 0; i < len(host); i++ {
		if c := host[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(host)
		}
	}
	return host
}
