package registry

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
)

// gcGate is the switch that holds the registry's content still while a
// collection marks and sweeps. While it is shut, the requests that could
// make a blob the mark did not see needed again (guarded) get 503 with
// Retry-After; pulls and layer uploads go on (see guarded).
type gcGate struct {
	mu       sync.Mutex
	shutAt   time.Time // zero: open
	inflight int       // guarded requests being served
	drained  chan struct{}

	// deletes is held by a collection while it deletes manifests and read
	// by Resolve, so that a deploy never pins a digest being deleted.
	deletes sync.RWMutex

	resolvedMu sync.Mutex
	resolved   map[string]time.Time // digest -> when Resolve last answered it
}

// guarded reports whether a request can change which blobs the mark has
// to keep: a manifest put or delete, a blob delete, a cross-repository
// mount (it links an old blob into another repository). Layer uploads
// are not guarded: a blob they write is new, and the sweep spares blobs
// written within the grace, so a long upload in flight never fails for a
// collection.
func guarded(r *http.Request) bool {
	switch r.Method {
	case http.MethodDelete:
		return true
	case http.MethodPut:
		return isManifestPath(r.URL.Path)
	case http.MethodPost:
		return r.URL.Query().Has("mount")
	}
	return false
}

// isManifestPath reports whether path is /v2/<name>/manifests/<reference>.
func isManifestPath(path string) bool {
	i := strings.LastIndex(path, "/manifests/")
	return strings.HasPrefix(path, "/v2/") && i > len("/v2") && !strings.Contains(path[i+len("/manifests/"):], "/")
}

// admit lets a request through, or answers 503 when it is guarded and
// the gate is shut. The caller calls release when the request is served.
func (g *gcGate) admit(w http.ResponseWriter, r *http.Request) (release func(), ok bool) {
	if !guarded(r) {
		return func() {}, true
	}
	g.mu.Lock()
	if !g.shutAt.IsZero() {
		since := time.Since(g.shutAt).Round(time.Millisecond)
		g.mu.Unlock()
		w.Header().Set("Retry-After", "1")
		serveError(w, errcode.ErrorCodeUnavailable.WithMessage(fmt.Sprintf(
			"berth's registry is collecting garbage: manifests, deletes and mounts are refused for a moment (for %s so far); retry in a second", since)))
		return nil, false
	}
	g.inflight++
	g.mu.Unlock()
	return g.done, true
}

func (g *gcGate) done() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.inflight--
	if g.inflight == 0 && g.drained != nil {
		close(g.drained)
		g.drained = nil
	}
}

// shut refuses new guarded requests and waits until those in flight are
// served, at most wait: then it opens again and says so.
func (g *gcGate) shut(ctx context.Context, wait time.Duration) error {
	g.mu.Lock()
	g.shutAt = time.Now()
	if g.inflight == 0 {
		g.mu.Unlock()
		return nil
	}
	drained := make(chan struct{})
	g.drained = drained
	n := g.inflight
	g.mu.Unlock()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-drained:
		return nil
	case <-ctx.Done():
		g.open()
		return ctx.Err()
	case <-t.C:
		g.open()
		return fmt.Errorf("%d manifest writes still in flight after %s", n, wait)
	}
}

func (g *gcGate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.shutAt = time.Time{}
	g.drained = nil
}

// noteResolved records that Resolve named digest: a deploy is about to
// pin it, so the next collections keep it for the grace.
func (g *gcGate) noteResolved(digest string) {
	g.resolvedMu.Lock()
	defer g.resolvedMu.Unlock()
	if g.resolved == nil {
		g.resolved = map[string]time.Time{}
	}
	g.resolved[digest] = time.Now()
}

// resolvedSince returns the digests resolved at or after cutoff and
// forgets the older ones.
func (g *gcGate) resolvedSince(cutoff time.Time) map[string]bool {
	g.resolvedMu.Lock()
	defer g.resolvedMu.Unlock()
	out := map[string]bool{}
	for d, at := range g.resolved {
		if at.Before(cutoff) {
			delete(g.resolved, d)
			continue
		}
		out[d] = true
	}
	return out
}
