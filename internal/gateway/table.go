// Package gateway is berth's HTTP gateway: it routes requests by their Host
// header to the healthy instances of apps, balances them by least outstanding
// requests, holds requests for idled apps while they are woken, and exports
// Prometheus metrics. It is fed routing tables from outside (see follow.go)
// and knows nothing of the store or the container runtime.
package gateway

import (
	"strings"
	"time"
	"unsafe"
)

// Defaults applied to AppRoutes fields left at zero.
const (
	DefaultWakeTimeout = 30 * time.Second
	DefaultTimeout     = 60 * time.Second
)

// AppRoutes is one app as the gateway sees it.
type AppRoutes struct {
	App         string
	Hosts       []string      // "hello.localtest.me" (exact) or "*.hello.test" (wildcard: any name ending in ".hello.test")
	Upstreams   []string      // "host:port" of the app's healthy instances; may be empty
	IdleEnabled bool          // the app scales to zero and can be woken
	Idle        bool          // the app is idled right now (informational)
	WakeTimeout time.Duration // how long a request waits for a wake (default 30s when 0)
	// Timeout bounds one proxied request up to its response header, and the
	// body of a buffered response (default 60s when 0; negative: none).
	// Streamed response bodies (SSE, chunked, large) and WebSocket
	// connections are not bounded by it.
	Timeout time.Duration
	// Revisions are the app's routable upstreams grouped by the revision
	// (template revision) their instances run. Upstreams stays the union of
	// them all and is what requests use when there is no Split.
	Revisions []RevisionRoutes
	// Split, when set, divides the app's traffic between two revisions.
	Split *Split
}

// RevisionRoutes is one revision of an app and the upstreams running it.
type RevisionRoutes struct {
	Revision  int64
	Upstreams []string
}

// Split sends new clients to Canary with probability Weight/10000 and
// the rest to Stable; a client keeps its side through a cookie.
type Split struct {
	Stable, Canary int64
	Weight         int // basis points, 0..10000
}

// Table is an immutable routing snapshot. The zero Table routes nothing.
type Table struct {
	apps  []AppRoutes
	exact map[string]int // host -> index in apps
	wild  map[string]int // ".suffix" (from "*.suffix") -> index in apps
	// minWild is the length of the shortest wildcard suffix: hosts no
	// longer skip the wildcard search.
	minWild int
}

// NewTable builds a table from apps. Hosts are matched case-insensitively
// and without a trailing dot; when two apps list the same host, the first
// one listed gets it. Entries that are not host names are ignored. The
// slices of apps are copied, so the caller may reuse them.
func NewTable(apps []AppRoutes) *Table {
	t := &Table{
		apps:  make([]AppRoutes, len(apps)),
		exact: make(map[string]int),
		wild:  make(map[string]int),
	}
	for i, a := range apps {
		a.Hosts = append([]string(nil), a.Hosts...)
		a.Upstreams = append([]string(nil), a.Upstreams...)
		if a.Revisions != nil {
			revs := make([]RevisionRoutes, len(a.Revisions))
			for j, r := range a.Revisions {
				revs[j] = RevisionRoutes{Revision: r.Revision, Upstreams: append([]string(nil), r.Upstreams...)}
			}
			a.Revisions = revs
		}
		if a.Split != nil {
			sp := *a.Split
			a.Split = &sp
		}
		t.apps[i] = a
		for _, h := range a.Hosts {
			h = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(h)), ".")
			if suffix, ok := strings.CutPrefix(h, "*"); ok {
				if len(suffix) < 2 || suffix[0] != '.' || strings.ContainsAny(suffix, "*:/ ") {
					continue
				}
				if _, dup := t.wild[suffix]; !dup {
					t.wild[suffix] = i
					if t.minWild == 0 || len(suffix) < t.minWild {
						t.minWild = len(suffix)
					}
				}
				continue
			}
			if h == "" || strings.ContainsAny(h, "*/ ") {
				continue
			}
			if _, dup := t.exact[h]; !dup {
				t.exact[h] = i
			}
		}
	}
	return t
}

// Lookup finds the app serving host: the port is stripped and case does
// not matter; an exact name wins over wildcards, and the longest matching
// wildcard suffix over shorter ones. The result points into the table and
// must not be modified.
func (t *Table) Lookup(host string) (*AppRoutes, bool) {
	i := t.index(unsafe.Slice(unsafe.StringData(host), len(host)))
	if i < 0 {
		return nil, false
	}
	return &t.apps[i], true
}

// Apps returns a copy of the apps of the table, in the order given (the
// slices and Split in it are shared with the table: do not modify them).
func (t *Table) Apps() []AppRoutes {
	if t == nil {
		return nil
	}
	return append([]AppRoutes(nil), t.apps...)
}

// maxHost bounds the host names looked up without allocating; longer
// names (beyond DNS's 253) never match.
const maxHost = 256

// index returns the index of the app serving host (a Host header value), or
// -1. It does not allocate and does not retain host.
func (t *Table) index(host []byte) int {
	i, _ := t.find(host)
	return i
}

// route is index for a request: a host "rev-N.<host>" that no app routes
// exactly is <host> (found exactly or by wildcard) with N, the revision
// asked for; rev is 0 for any other host.
func (t *Table) route(host []byte) (i int, rev int64) {
	i, exact := t.find(host)
	if exact || len(host) == 0 || host[0]|0x20 != 'r' {
		return i, 0
	}
	if rev, rest := cutRevPrefix(host); rev > 0 {
		if j, _ := t.find(rest); j >= 0 {
			return j, rev
		}
	}
	return i, 0
}

// cutRevPrefix splits "rev-N.rest" (any case) into N and rest; rev is 0
// when host does not start so, with N a positive int64.
func cutRevPrefix(host []byte) (rev int64, rest []byte) {
	if len(host) < 6 || host[0]|0x20 != 'r' || host[1]|0x20 != 'e' || host[2]|0x20 != 'v' || host[3] != '-' {
		return 0, nil
	}
	for i := 4; i < len(host); i++ {
		if host[i] == '.' {
			if n, ok := parseRevision(host[4:i]); ok {
				return n, host[i+1:]
			}
			return 0, nil
		}
	}
	return 0, nil
}

// parseRevision parses a positive decimal int64 (digits only).
func parseRevision(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := int64(c - '0')
		if n > (1<<63-1-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, n > 0
}

// find is index, and reports whether the host matched exactly (rather
// than by a wildcard).
func (t *Table) find(host []byte) (int, bool) {
	if t == nil || len(t.apps) == 0 {
		return -1, false
	}
	host = stripPort(host)
	if n := len(host); n > 0 && host[n-1] == '.' {
		host = host[:n-1]
	}
	if len(host) == 0 || len(host) > maxHost {
		return -1, false
	}
	var buf [maxHost]byte
	for i, c := range host {
		if 'A' <= c && c <= 'Z' {
			n := copy(buf[:], host)
			for j := i; j < n; j++ {
				if c := buf[j]; 'A' <= c && c <= 'Z' {
					buf[j] = c + 'a' - 'A'
				}
			}
			host = buf[:n]
			break
		}
	}
	// The string conversions below are only used as map keys for lookups,
	// which the compiler does without copying.
	if i, ok := t.exact[string(host)]; ok {
		return i, true
	}
	if t.minWild == 0 || len(host) <= t.minWild {
		return -1, false
	}
	// The longest suffix starts at the leftmost dot.
	for i := 1; i+t.minWild <= len(host); i++ {
		if host[i] != '.' {
			continue
		}
		if j, ok := t.wild[string(host[i:])]; ok {
			return j, false
		}
	}
	return -1, false
}

// stripPort removes a ":port" from a Host value, keeping an IPv6 literal's
// brackets.
func stripPort(host []byte) []byte {
	if len(host) > 0 && host[0] == '[' {
		for i, c := range host {
			if c == ']' {
				return host[:i+1]
			}
		}
		return host
	}
	for i := len(host) - 1; i >= 0; i-- {
		switch host[i] {
		case ':':
			return host[:i]
		case '.', ']':
			return host
		}
	}
	return host
}
