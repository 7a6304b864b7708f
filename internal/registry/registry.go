// Package registry is berth's image registry: CNCF Distribution
// (github.com/distribution/distribution/v3) embedded as a library and
// served under /v2/ on the API's own listener, with berth's tokens.
//
// It is the only package that imports Distribution (DESIGN.md). The
// choices, and why:
//
//   - The registry App is built with handlers.NewApp from a configuration
//     made in code, never read from a file or REGISTRY_* variables:
//     filesystem storage under the directory the caller gives
//     (<data-dir>/registry), delete enabled (the distribution-spec's
//     content management: tag, manifest and blob deletes), redirects off,
//     no blob descriptor cache (with several servers sharing the storage a
//     cached descriptor would outlive a delete on another server), no
//     redis, no notifications, and relative Location URLs, so that an
//     upload works through any host name or proxy that reaches the server.
//   - Distribution's globals: its health checks register on a process-wide
//     registry and panic the second time, so they are never registered
//     (berth's /healthz covers the server; a storage fault shows as a 5xx
//     on /v2/). Importing Distribution adds /debug/health to
//     http.DefaultServeMux, which berth never serves. The registry's `registry.NewRegistry` entry point would set
//     logrus's global level and formatter; it is not used, and logrus's
//     standard logger is left alone: Distribution's log lines go to the
//     caller's slog.Logger instead (see log.go). handlers.NewApp panics on
//     a configuration it dislikes: New turns that into an error.
//   - Auth wraps the App rather than implementing Distribution's
//     auth.AccessController, because an access controller can only answer
//     "authenticate" (401) or a bare 400: it cannot say 403 to an agent
//     token that tries to push. See auth.go.
//   - Distribution v3.1 lacks the referrers API of distribution-spec 1.1
//     (content discovery); berth serves it from the same storage
//     (referrers.go). It keeps every blob under its sha256 digest, so
//     sha512 content is not supported; the conformance test leaves that
//     data set out and passes everything else with zero failures.
//   - Non-distributable layers may name http(s) URLs (the registry stores
//     the manifest; it never fetches them).
//   - Garbage collection (gc.go): images nothing uses and nothing pushed
//     or resolved within a grace are deleted, then unreferenced blobs are
//     swept with manifests read-only for a few milliseconds. Servers share
//     one storage; the leader collects it, and the other servers forward
//     the requests the read-only window guards to the leader
//     (forward.go), so that its gate holds for all of them.
//   - HTTP uploads carry their state in a token HMAC'd with Config.Secret.
//     Servers that share the storage must share the secret, or an upload
//     started on one and continued on another fails.
package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/sirupsen/logrus"

	// The filesystem storage driver registers itself with the factory.
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

// Authorize checks a berth token and returns its role: api.RoleUser
// (push and pull) or api.RoleAgent (pull only); "" for a token that does
// not exist or is wrong. An error means the check could not be made (the
// store is down), not that the token is bad.
type Authorize func(ctx context.Context, token string) (role string, err error)

// Config says where the registry keeps its content and whom it serves.
type Config struct {
	// Dir is the storage root, created when missing: <data-dir>/registry.
	Dir string
	// Authorize checks the token of every request.
	Authorize Authorize
	// Secret signs upload state. Servers sharing Dir need the same one;
	// "" picks a random one, good for a single server only.
	Secret string
	// Log receives Distribution's log lines (nil: discarded).
	Log *slog.Logger
}

// Registry is an embedded Distribution registry. It is an http.Handler
// for the /v2/ prefix.
type Registry struct {
	app       *handlers.App
	referrers *referrers
	authorize Authorize
	logger    *logrus.Entry // Distribution's view of Config.Log
	gc        gcState       // garbage collection (gc.go)
}

// New builds the registry. It may be called several times in a process
// (tests do): nothing it sets up is process-wide.
func New(cfg Config) (*Registry, error) {
	if cfg.Dir == "" {
		return nil, errors.New("registry: no storage directory")
	}
	if cfg.Authorize == nil {
		return nil, errors.New("registry: no token check (Authorize)")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("registry storage directory %s: %w", cfg.Dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("registry storage directory: %w", err)
	}
	if cfg.Secret == "" {
		b := make([]byte, 32)
		rand.Read(b)
		cfg.Secret = hex.EncodeToString(b)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	logger := newLogrusEntry(log)
	ctx := logContext{Context: context.Background(), logger: logger}
	app, err := newApp(ctx, appConfig(dir, cfg.Secret))
	if err != nil {
		return nil, err
	}
	rf, err := newReferrers(ctx, dir)
	if err != nil {
		app.Shutdown()
		return nil, fmt.Errorf("registry: referrers: %w", err)
	}
	return &Registry{app: app, referrers: rf, authorize: cfg.Authorize, logger: logger, gc: gcState{dir: dir}}, nil
}

// appConfig is the registry's whole configuration.
func appConfig(dir, secret string) *configuration.Configuration {
	c := &configuration.Configuration{Version: "0.1"}
	c.Storage = configuration.Storage{
		"filesystem": configuration.Parameters{"rootdirectory": dir},
		"delete":     configuration.Parameters{"enabled": true},
		"redirect":   configuration.Parameters{"disable": true},
	}
	c.HTTP.Secret = secret
	c.HTTP.RelativeURLs = true
	c.Catalog.MaxEntries = 1000 // 0 answers every /v2/_catalog with nothing
	// A non-distributable layer may name where it is fetched from; the
	// registry stores the manifest and never fetches the URL itself.
	c.Validation.Manifests.URLs.Allow = []string{"^https?://"}
	return c
}

// newApp calls handlers.NewApp, which reports a bad configuration by
// panicking: here it is an error (and what it started is stopped).
func newApp(ctx context.Context, c *configuration.Configuration) (app *handlers.App, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		if p := recover(); p != nil {
			cancel()
			app, err = nil, fmt.Errorf("registry: bad configuration: %v", p)
		}
	}()
	return handlers.NewApp(ctx, c), nil
}

// Close stops the registry's background work (the purge of abandoned
// uploads). Requests still in flight may fail.
func (g *Registry) Close() error {
	return g.app.Shutdown()
}

// ServeHTTP serves a /v2/ request that carries an acceptable token.
func (g *Registry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !g.allowed(w, r) {
		return
	}
	release, ok := g.gc.admit(w, r) // read-only while a collection sweeps
	if !ok {
		return
	}
	defer release()
	r = r.WithContext(logContext{Context: r.Context(), logger: g.logger})
	if name, dgst, ok := referrersPath(r.URL.Path); ok {
		g.referrers.serve(w, r, name, dgst)
		return
	}
	if isManifestPut(r) {
		w = withSubjectHeader(w, r)
	}
	g.app.ServeHTTP(w, r)
}
