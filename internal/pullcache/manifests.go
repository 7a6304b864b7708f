package pullcache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// manifestTypes are what a digest is asked for with: content-addressed,
// so whatever it is, it is the one wanted.
var manifestTypes = []string{
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}

// StaleHeader marks a tag answered from the cache because no server
// answered; its value is when the tag last resolved to this digest.
const StaleHeader = "Berth-Pullcache-Stale"

type manifest struct {
	mediaType string
	digest    string
	body      []byte
}

func (c *Cache) serveManifestByDigest(w http.ResponseWriter, r *http.Request, name, digest string) {
	if m, err := c.readManifest(digest); err == nil {
		c.stats.manifestHit()
		writeManifest(w, r, m)
		return
	} else if !errors.Is(err, fs.ErrNotExist) {
		c.log.Warn("pull cache: reading a cached manifest; asking the origin", "digest", digest, "err", err)
	}
	accept := strings.Join(append(manifestTypes, r.Header.Values("Accept")...), ", ")
	m, err := c.flights.do(r.Context(), c, "digest "+digest, func(ctx context.Context) (*manifest, error) {
		return c.fetchManifest(ctx, name, digest, accept)
	})
	if err != nil {
		writeError(w, asRegError(err, "manifest "+name+"@"+digest))
		return
	}
	writeManifest(w, r, m)
}

// serveManifestByTag asks the origin what the tag is now; when no server
// answers, the digest it resolved to last time stands in.
func (c *Cache) serveManifestByTag(w http.ResponseWriter, r *http.Request, name, tag string) {
	accept := strings.Join(r.Header.Values("Accept"), ", ")
	m, err := c.flights.do(r.Context(), c, "tag "+name+":"+tag+" "+accept, func(ctx context.Context) (*manifest, error) {
		m, err := c.fetchManifest(ctx, name, tag, accept)
		if err == nil {
			c.storeTag(name, tag, m)
		}
		return m, err
	})
	if err == nil {
		writeManifest(w, r, m)
		return
	}
	var e *regError
	if errors.As(err, &e) && e.Status == http.StatusNotFound {
		c.forgetTag(name, tag)
	}
	if errors.As(err, &e) && e.unreachable {
		if m, at, ok := c.staleTag(name, tag, accept); ok {
			c.stats.staleTag()
			c.log.Warn("pull cache: no server answers; serving the digest the tag resolved to before",
				"repository", name, "tag", tag, "digest", m.digest, "resolved", at.Format(time.RFC3339), "err", err)
			w.Header().Set(StaleHeader, at.UTC().Format(time.RFC3339))
			w.Header().Set("Warning", `110 berth-pullcache "Response is Stale: no berth server answers"`)
			writeManifest(w, r, m)
			return
		}
	}
	writeError(w, asRegError(err, "manifest "+name+":"+tag))
}

func writeManifest(w http.ResponseWriter, r *http.Request, m *manifest) {
	h := w.Header()
	h.Set("Content-Type", m.mediaType)
	h.Set("Docker-Content-Digest", m.digest)
	h.Set("ETag", `"`+m.digest+`"`)
	h.Set("Content-Length", strconv.Itoa(len(m.body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(m.body)
	}
}

// fetchManifest GETs a manifest (ref a tag or a digest) from the origin,
// checks it and stores it under its digest.
func (c *Cache) fetchManifest(ctx context.Context, name, ref, accept string) (*manifest, error) {
	what := "manifest " + name + ":" + ref
	if digestRE.MatchString(ref) {
		what = "manifest " + name + "@" + ref
	}
	var hdr http.Header
	if accept != "" {
		hdr = http.Header{"Accept": {accept}}
	}
	c.stats.originManifestRequest()
	resp, base, err := c.origin.do(ctx, http.MethodGet, "/v2/"+name+"/manifests/"+ref, hdr)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, originError(resp, base, what, "MANIFEST_UNKNOWN")
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
	if err != nil {
		return nil, &regError{Status: http.StatusBadGateway, Code: "UNAVAILABLE", Message: fmt.Sprintf("%s: reading it from %s: %v", what, base, err)}
	}
	if len(body) > maxManifestSize {
		return nil, &regError{Status: http.StatusBadGateway, Code: "SIZE_INVALID", Message: fmt.Sprintf("%s: over %d bytes: not a manifest the pull cache takes", what, maxManifestSize)}
	}
	sum := sha256.Sum256(body)
	m := &manifest{digest: "sha256:" + hex.EncodeToString(sum[:]), body: body, mediaType: mediaTypeOf(resp.Header.Get("Content-Type"), body)}
	said := resp.Header.Get("Docker-Content-Digest")
	if digestRE.MatchString(ref) && m.digest != ref || strings.HasPrefix(said, "sha256:") && said != m.digest {
		c.stats.mismatch()
		return nil, &regError{Status: http.StatusBadGateway, Code: "DIGEST_INVALID",
			Message: fmt.Sprintf("%s: %s sent a manifest whose digest is %s (it said %q): not stored", what, base, m.digest, said)}
	}
	if err := c.storeManifest(m); err != nil {
		c.log.Warn("pull cache: storing a manifest", "digest", m.digest, "err", err)
	}
	return m, nil
}

// mediaTypeOf is the Content-Type the origin gave, or the manifest's own
// mediaType field when it gave none.
func mediaTypeOf(contentType string, body []byte) string {
	if mt, _, err := mime.ParseMediaType(contentType); err == nil && mt != "" && mt != "application/octet-stream" && mt != "text/plain" {
		return mt
	}
	var doc struct {
		MediaType string `json:"mediaType"`
	}
	if json.Unmarshal(body, &doc) == nil && doc.MediaType != "" {
		return doc.MediaType
	}
	return "application/vnd.oci.image.manifest.v1+json"
}

// A stored manifest is one file: its media type, a newline, its bytes.
func (c *Cache) storeManifest(m *manifest) error {
	data := append([]byte(m.mediaType+"\n"), m.body...)
	return c.writeFileAtomic(c.manifestPath(m.digest), data)
}

func (c *Cache) readManifest(digest string) (*manifest, error) {
	path := c.manifestPath(digest)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	mt, body, ok := bytes.Cut(data, []byte("\n"))
	if !ok {
		return nil, fmt.Errorf("cached manifest %s: no media type line", digest)
	}
	if sum := sha256.Sum256(body); "sha256:"+hex.EncodeToString(sum[:]) != digest {
		return nil, fmt.Errorf("cached manifest %s: its bytes do not match the digest", digest)
	}
	if fi, err := os.Stat(path); err == nil {
		c.touch(path, fi.ModTime())
	}
	return &manifest{mediaType: string(mt), digest: digest, body: body}, nil
}

// tagRecord is what a tag resolved to last: tags/<sha256 of name:tag>.json.
type tagRecord struct {
	Name      string    `json:"name"`
	Tag       string    `json:"tag"`
	Digest    string    `json:"digest"`
	MediaType string    `json:"media_type"`
	Resolved  time.Time `json:"resolved"`
}

func (c *Cache) tagPath(name, tag string) string {
	sum := sha256.Sum256([]byte(name + ":" + tag))
	return filepath.Join(c.dir, "tags", hex.EncodeToString(sum[:])+".json")
}

func (c *Cache) storeTag(name, tag string, m *manifest) {
	data, _ := json.Marshal(tagRecord{Name: name, Tag: tag, Digest: m.digest, MediaType: m.mediaType, Resolved: c.timeNow().UTC()})
	if err := c.writeFileAtomic(c.tagPath(name, tag), data); err != nil {
		c.log.Warn("pull cache: recording a tag", "repository", name, "tag", tag, "err", err)
	}
}

func (c *Cache) forgetTag(name, tag string) {
	if err := os.Remove(c.tagPath(name, tag)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		c.log.Warn("pull cache: forgetting a tag", "repository", name, "tag", tag, "err", err)
	}
}

// staleTag is the manifest the tag resolved to last, if it is still
// here and the client accepts its type.
func (c *Cache) staleTag(name, tag, accept string) (*manifest, time.Time, bool) {
	data, err := os.ReadFile(c.tagPath(name, tag))
	if err != nil {
		return nil, time.Time{}, false
	}
	var rec tagRecord
	if json.Unmarshal(data, &rec) != nil || rec.Name != name || rec.Tag != tag || !digestRE.MatchString(rec.Digest) || !accepts(accept, rec.MediaType) {
		return nil, time.Time{}, false
	}
	m, err := c.readManifest(rec.Digest)
	if err != nil {
		return nil, time.Time{}, false
	}
	return m, rec.Resolved, true
}

// accepts reports whether an Accept header admits a media type (no
// header admits all).
func accepts(accept, mediaType string) bool {
	if strings.TrimSpace(accept) == "" {
		return true
	}
	for _, part := range strings.Split(accept, ",") {
		mt, _, _ := strings.Cut(part, ";")
		mt = strings.TrimSpace(mt)
		if mt == mediaType || mt == "*/*" || mt == "application/*" {
			return true
		}
	}
	return false
}

// writeFileAtomic writes through a temp file and a rename: a reader sees
// the old file or the new one, never part of one.
func (c *Cache) writeFileAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Join(c.dir, "tmp"), "file-*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// flightGroup merges concurrent identical manifest requests into one
// origin request. The request runs on the cache's context (with a
// timeout), so one client giving up does not fail the others.
type flightGroup struct {
	mu sync.Mutex
	m  map[string]*flight
}

type flight struct {
	done chan struct{}
	val  *manifest
	err  error
}

func (g *flightGroup) do(ctx context.Context, c *Cache, key string, fn func(context.Context) (*manifest, error)) (*manifest, error) {
	g.mu.Lock()
	fl := g.m[key]
	if fl == nil {
		fl = &flight{done: make(chan struct{})}
		g.m[key] = fl
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			fctx, cancel := context.WithTimeout(c.ctx, manifestTimeout)
			fl.val, fl.err = fn(fctx)
			cancel()
			g.mu.Lock()
			delete(g.m, key)
			g.mu.Unlock()
			close(fl.done)
		}()
	}
	g.mu.Unlock()
	select {
	case <-fl.done:
		return fl.val, fl.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
