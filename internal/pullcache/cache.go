package pullcache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Defaults of Config's bounds.
const (
	DefaultMaxBlobSize  = 10 << 30 // 10 GiB
	DefaultStallTimeout = 60 * time.Second
	maxManifestSize     = 4 << 20 // Distribution's own limit
	manifestTimeout     = 60 * time.Second
	touchEvery          = 5 * time.Minute // how stale an access time may get
)

// Config says where the cache keeps its files and where it fetches from.
type Config struct {
	// Dir holds the cache (created when missing): <agent-dir>/pullcache.
	// One Cache at a time may use it.
	Dir string
	// Origins are the base URLs of berth's servers (http://host:7070); the
	// registry is under /v2/ there. A request goes to the one that answered
	// last, then to the others.
	Origins []string
	// Token returns the agent's token, sent as a Bearer token; it is
	// called for every request, so the token may change. Nil: none sent.
	Token func() string
	// Client talks to the origins. Nil: one with connect and header
	// timeouts.
	Client *http.Client
	// MaxBlobSize refuses bigger blobs (0: DefaultMaxBlobSize).
	MaxBlobSize int64
	// StallTimeout abandons an origin stream that sends nothing for that
	// long (0: DefaultStallTimeout).
	StallTimeout time.Duration
	// Log gets the cache's log lines (nil: discarded).
	Log *slog.Logger
}

// Cache is the pull-through cache: an http.Handler for /v2/ and
// /debug/pullcache.
type Cache struct {
	dir     string
	origin  *origin
	maxBlob int64
	stall   time.Duration
	log     *slog.Logger
	ctx     context.Context // cancelled by Close: stops the fetches
	cancel  context.CancelFunc
	wg      sync.WaitGroup // fetches and manifest flights
	mu      sync.Mutex     // guards fetches, and orders blob file opens against them
	fetches map[string]*blobFetch
	flights flightGroup
	stats   statsKeeper
	timeNow func() time.Time
}

// New opens (or creates) the cache in cfg.Dir. Temp files left by an
// earlier process are removed.
func New(cfg Config) (*Cache, error) {
	if cfg.Dir == "" {
		return nil, errors.New("pull cache: no directory")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("pull cache directory %s: %w", cfg.Dir, err)
	}
	o, err := newOrigin(cfg.Origins, cfg.Token, cfg.Client)
	if err != nil {
		return nil, err
	}
	for _, sub := range []string{"blobs/sha256", "manifests/sha256", "tags", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("pull cache directory: %w", err)
		}
	}
	if err := clearDir(filepath.Join(dir, "tmp")); err != nil {
		return nil, fmt.Errorf("pull cache: removing old temp files: %w", err)
	}
	c := &Cache{
		dir: dir, origin: o, maxBlob: cfg.MaxBlobSize, stall: cfg.StallTimeout, log: cfg.Log,
		fetches: map[string]*blobFetch{}, timeNow: time.Now,
	}
	if c.maxBlob <= 0 {
		c.maxBlob = DefaultMaxBlobSize
	}
	if c.stall <= 0 {
		c.stall = DefaultStallTimeout
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.flights.m = map[string]*flight{}
	c.stats.blobs = map[string]*BlobStats{}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

// Close abandons the fetches in progress (their temp files are removed;
// nothing half-written is kept) and waits for them to end. Requests that
// are still streaming are cut.
func (c *Cache) Close() error {
	c.cancel()
	c.wg.Wait()
	return nil
}

func clearDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// The distribution-spec grammar (only sha256 digests are kept).
var (
	nameRE   = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	tagRE    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)
	digestRE = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
)

const maxNameLength = 255

// ServeHTTP answers the registry API's read side and /debug/pullcache.
func (c *Cache) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, &regError{Status: http.StatusMethodNotAllowed, Code: "UNSUPPORTED",
			Message: r.Method + " " + r.URL.Path + ": the pull cache is read-only (push to berth's server instead)"})
		return
	}
	path := r.URL.Path
	switch {
	case path == "/debug/pullcache":
		c.serveStats(w)
		return
	case r.URL.RawPath != "" || strings.Contains(path, "%"):
		writeError(w, &regError{Status: http.StatusBadRequest, Code: "NAME_INVALID", Message: "percent-encoded paths are not accepted"})
		return
	case path == "/v2/" || path == "/v2":
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("{}\n"))
		return
	case !strings.HasPrefix(path, "/v2/"):
		writeError(w, &regError{Status: http.StatusNotFound, Code: "NOT_FOUND", Message: path + ": not a registry path (want /v2/...)"})
		return
	}
	name, kind, ref, ok := splitPath(strings.TrimPrefix(path, "/v2/"))
	if !ok {
		writeError(w, &regError{Status: http.StatusNotFound, Code: "UNSUPPORTED",
			Message: path + ": the pull cache serves only /v2/<name>/manifests/<reference> and /v2/<name>/blobs/<digest>"})
		return
	}
	if e := checkName(name); e != nil {
		writeError(w, e)
		return
	}
	if kind == "blobs" {
		if !digestRE.MatchString(ref) {
			writeError(w, badDigest(ref))
			return
		}
		c.serveBlob(w, r, name, ref)
		return
	}
	switch {
	case digestRE.MatchString(ref):
		c.serveManifestByDigest(w, r, name, ref)
	case strings.Contains(ref, ":"):
		writeError(w, badDigest(ref))
	case tagRE.MatchString(ref):
		c.serveManifestByTag(w, r, name, ref)
	default:
		writeError(w, &regError{Status: http.StatusBadRequest, Code: "TAG_INVALID",
			Message: fmt.Sprintf("manifest reference %q: not a tag ([A-Za-z0-9_][A-Za-z0-9._-]{0,127}) nor a sha256 digest", ref)})
	}
}

// splitPath splits <name>/<kind>/<ref>, the name being every segment
// before the last two.
func splitPath(rest string) (name, kind, ref string, ok bool) {
	i := strings.LastIndexByte(rest, '/')
	if i < 0 {
		return "", "", "", false
	}
	ref = rest[i+1:]
	j := strings.LastIndexByte(rest[:i], '/')
	if j < 0 {
		return "", "", "", false
	}
	name, kind = rest[:j], rest[j+1:i]
	if kind != "manifests" && kind != "blobs" {
		return "", "", "", false
	}
	return name, kind, ref, true
}

func checkName(name string) *regError {
	if len(name) > maxNameLength || !nameRE.MatchString(name) {
		return &regError{Status: http.StatusBadRequest, Code: "NAME_INVALID",
			Message: fmt.Sprintf("repository name %q: want lower-case path components of [a-z0-9] joined by '.', '_', '__' or '-', separated by '/', at most %d characters", name, maxNameLength)}
	}
	return nil
}

func badDigest(ref string) *regError {
	return &regError{Status: http.StatusBadRequest, Code: "DIGEST_INVALID",
		Message: fmt.Sprintf("digest %q: want sha256:<64 lower-case hex digits> (the only algorithm the pull cache keeps)", ref)}
}

// regError is an answer in the distribution-spec's error format.
type regError struct {
	Status      int
	Code        string
	Message     string
	unreachable bool // no origin answered: a stored tag may stand in
}

func (e *regError) Error() string { return e.Message }

func writeError(w http.ResponseWriter, e *regError) {
	body, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": e.Code, "message": e.Message}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(len(body)+1))
	w.WriteHeader(e.Status)
	w.Write(append(body, '\n'))
}

// asRegError makes any error an answer: regErrors as they are, a
// cancelled or timed-out origin request a 503, anything else a 500.
func asRegError(err error, what string) *regError {
	var e *regError
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return &regError{Status: http.StatusServiceUnavailable, Code: "UNAVAILABLE", Message: what + ": " + err.Error()}
	}
	return &regError{Status: http.StatusInternalServerError, Code: "UNKNOWN", Message: what + ": " + err.Error()}
}

// Paths. hex is always from a checked digest.
func (c *Cache) blobPath(digest string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(c.dir, "blobs", "sha256", hex[:2], hex)
}

func (c *Cache) manifestPath(digest string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(c.dir, "manifests", "sha256", hex[:2], hex)
}

// touch records an access in the file's mtime, at most every touchEvery.
func (c *Cache) touch(path string, mtime time.Time) {
	now := c.timeNow()
	if now.Sub(mtime) < touchEvery {
		return
	}
	if err := os.Chtimes(path, now, now); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.log.Warn("pull cache: recording an access time", "path", path, "err", err)
	}
}
