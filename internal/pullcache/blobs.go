package pullcache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	copyBuffer = 256 << 10
	maxResumes = 3 // Range requests after a cut stream, per fetch
)

// blobFetch is the one origin fetch of a missing blob. The requests that
// want the blob read the temp file as it grows.
type blobFetch struct {
	digest string
	name   string        // the repository asked for it first: asked of the origin
	ready  chan struct{} // closed once the origin answered
	// Set before ready is closed:
	fail *regError // the origin's answer was not the blob
	size int64     // the blob's length; -1 when the origin did not say

	mu      sync.Mutex
	path    string // the temp file; the stored file once done
	written int64
	done    bool
	err     error         // why nothing was stored, when done
	wake    chan struct{} // closed and replaced on every change
}

func (f *blobFetch) changed(fn func()) {
	f.mu.Lock()
	fn()
	close(f.wake)
	f.wake = make(chan struct{})
	f.mu.Unlock()
}

// state is a consistent view for a reader.
func (f *blobFetch) state() (written int64, done bool, err error, wake chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.written, f.done, f.err, f.wake
}

// result waits for the fetch to end and returns why it failed (nil: the
// blob is stored).
func (f *blobFetch) result(ctx context.Context) error {
	for {
		_, done, err, wake := f.state()
		if done {
			return err
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// open opens the file a reader follows: the temp file, or the stored
// one once the fetch is done.
func (f *blobFetch) open(ctx context.Context) (*os.File, error) {
	f.mu.Lock()
	file, err := os.Open(f.path)
	f.mu.Unlock()
	if err == nil {
		return file, nil
	}
	// The temp file goes just before a failed fetch says so.
	if ferr := f.result(ctx); ferr != nil {
		var e *regError
		if errors.As(ferr, &e) {
			return nil, e
		}
		return nil, &regError{Status: http.StatusBadGateway, Code: "UNKNOWN", Message: ferr.Error()}
	}
	return nil, fmt.Errorf("opening the fetched blob: %w", err)
}

// serveBlob answers GET/HEAD of a blob: from its file, from the fetch
// that is getting it, or by starting that fetch (GET only; a HEAD of a
// missing blob is asked of the origin).
func (c *Cache) serveBlob(w http.ResponseWriter, r *http.Request, name, digest string) {
	file, f, started, err := c.lookupBlob(name, digest, r.Method == http.MethodGet)
	if err != nil {
		writeError(w, asRegError(err, "blob "+digest))
		return
	}
	switch {
	case file != nil:
		defer file.Close()
		c.stats.blobHit(digest)
		c.serveBlobFile(w, r, file, digest)
	case f != nil:
		c.stats.blobStream(digest, started)
		c.streamBlob(w, r, f)
	default:
		c.headBlobAtOrigin(w, r, name, digest)
	}
}

// lookupBlob returns the stored file of digest, or the fetch getting it,
// started when start is set and there is none. Under c.mu, so that a
// fetch that ends (renames its file, then leaves c.fetches) is always
// found one way or the other.
func (c *Cache) lookupBlob(name, digest string, start bool) (*os.File, *blobFetch, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.fetches[digest]; f != nil {
		return nil, f, false, nil // failed fetches leave before saying so
	}
	file, err := os.Open(c.blobPath(digest))
	if err == nil {
		return file, nil, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, false, fmt.Errorf("reading the cached blob: %w", err)
	}
	if !start {
		return nil, nil, false, nil
	}
	if c.ctx.Err() != nil {
		return nil, nil, false, &regError{Status: http.StatusServiceUnavailable, Code: "UNAVAILABLE", Message: "the pull cache is shutting down"}
	}
	f := &blobFetch{digest: digest, name: name, ready: make(chan struct{}), size: -1, wake: make(chan struct{})}
	c.fetches[digest] = f
	c.wg.Add(1)
	go c.runFetch(f)
	return nil, f, true, nil
}

func (c *Cache) serveBlobFile(w http.ResponseWriter, r *http.Request, file *os.File, digest string) {
	fi, err := file.Stat()
	if err != nil {
		writeError(w, asRegError(err, "blob "+digest))
		return
	}
	c.touch(file.Name(), fi.ModTime())
	blobHeaders(w, digest)
	// ServeContent answers Range and HEAD; no Last-Modified (zero time).
	http.ServeContent(w, r, "", time.Time{}, &countingReadSeeker{ReadSeeker: file, count: func(n int) { c.stats.served(digest, n) }})
}

func blobHeaders(w http.ResponseWriter, digest string) {
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", digest)
	h.Set("ETag", `"`+digest+`"`)
	h.Set("Accept-Ranges", "bytes")
}

// headBlobAtOrigin answers a HEAD of a blob that is not here.
func (c *Cache) headBlobAtOrigin(w http.ResponseWriter, r *http.Request, name, digest string) {
	resp, base, err := c.origin.do(r.Context(), http.MethodHead, "/v2/"+name+"/blobs/"+digest, nil)
	if err != nil {
		writeError(w, asRegError(err, "blob "+digest))
		return
	}
	if resp.StatusCode != http.StatusOK {
		e := originError(resp, base, "blob "+name+"@"+digest, "BLOB_UNKNOWN")
		w.Header().Del("Content-Length")
		w.WriteHeader(e.Status) // a HEAD answer has no body
		return
	}
	drain(resp)
	blobHeaders(w, digest)
	if resp.ContentLength >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(http.StatusOK)
}

// streamBlob sends a blob from the temp file of its fetch as it grows.
// It holds back the last byte until the fetch verified the digest: a
// client never gets a whole body that turns out wrong. On a failure the
// response is cut (the client sees a short or broken body and retries).
func (c *Cache) streamBlob(w http.ResponseWriter, r *http.Request, f *blobFetch) {
	select {
	case <-f.ready:
	case <-r.Context().Done():
		return
	}
	if f.fail != nil {
		writeError(w, f.fail)
		return
	}
	start, end, partial, ok := blobRange(r.Header.Get("Range"), f.size)
	if !ok {
		w.Header().Set("Content-Range", "bytes */"+strconv.FormatInt(f.size, 10))
		writeError(w, &regError{Status: http.StatusRequestedRangeNotSatisfiable, Code: "BLOB_UNKNOWN", Message: "range " + r.Header.Get("Range") + " is outside the blob"})
		return
	}
	var file *os.File
	if r.Method == http.MethodGet {
		var err error
		if file, err = f.open(r.Context()); err != nil {
			writeError(w, asRegError(err, "blob "+f.digest))
			return
		}
		defer file.Close()
	}
	blobHeaders(w, f.digest)
	if end >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(end-start, 10))
	}
	status := http.StatusOK
	if partial {
		status = http.StatusPartialContent
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, f.size))
	}
	w.WriteHeader(status)
	if file == nil { // HEAD
		return
	}
	if err := c.followFetch(w, r.Context(), f, file, start, end); err != nil {
		if r.Context().Err() == nil {
			c.log.Debug("pull cache: blob stream cut", "digest", f.digest, "err", err) // the fetch logs why
		}
		panic(http.ErrAbortHandler) // cut the response: the client must not take it as whole
	}
}

// followFetch copies [start, end) of the growing file to w (end -1: to
// the end of the blob, whatever it is).
func (c *Cache) followFetch(w http.ResponseWriter, ctx context.Context, f *blobFetch, file *os.File, start, end int64) error {
	rc := http.NewResponseController(w)
	buf := make([]byte, copyBuffer)
	off := start
	for {
		written, done, ferr, wake := f.state()
		if done && ferr != nil {
			return ferr
		}
		limit := written
		if !done && limit > 0 {
			limit-- // the last byte waits for the digest check
		}
		if end >= 0 && limit > end {
			limit = end
		}
		if off < limit {
			n := int(min(int64(len(buf)), limit-off))
			n, err := file.ReadAt(buf[:n], off)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return werr
				}
				c.stats.served(f.digest, n)
				off += int64(n)
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("reading the blob being fetched: %w", err)
			}
			continue
		}
		if done || (end >= 0 && off >= end) {
			return nil
		}
		_ = rc.Flush()
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// blobRange parses a single-range Range header against size. Without one,
// or one that cannot be honoured on a blob of unknown size or with
// several ranges, it is the whole blob (a server may ignore Range). ok is
// false for a range outside the blob.
func blobRange(h string, size int64) (start, end int64, partial, ok bool) {
	spec, found := strings.CutPrefix(h, "bytes=")
	if h == "" || !found || size < 0 || strings.Contains(spec, ",") {
		return 0, size, false, true
	}
	a, b, _ := strings.Cut(strings.TrimSpace(spec), "-")
	switch {
	case a == "": // the last b bytes
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n <= 0 {
			return 0, size, false, true
		}
		return max(size-n, 0), size, true, size > 0
	default:
		s, err := strconv.ParseInt(a, 10, 64)
		if err != nil || s < 0 {
			return 0, size, false, true
		}
		e := size - 1
		if b != "" {
			if e, err = strconv.ParseInt(b, 10, 64); err != nil || e < s {
				return 0, size, false, true
			}
		}
		if s >= size {
			return 0, 0, false, false
		}
		return s, min(e+1, size), true, true
	}
}

// runFetch fetches f from the origin into a temp file and, when it is
// whole and right, stores it. It runs on the cache's context: a client
// that goes away does not stop it, Close does.
func (c *Cache) runFetch(f *blobFetch) {
	defer c.wg.Done()
	began := c.timeNow()
	err := c.fetchBlob(f)
	if err != nil {
		c.stats.blobFailed()
		c.log.Warn("pull cache: blob not stored", "digest", f.digest, "repository", f.name, "err", err)
	} else {
		c.log.Info("pull cache: blob stored", "digest", f.digest, "repository", f.name,
			"bytes", f.written, "took", c.timeNow().Sub(began).Round(time.Millisecond))
	}
	c.forget(f)
}

// forget takes f out of c.fetches: requests that come later do not join
// it. A failed fetch leaves before it tells its readers, so that no new
// request gets a failure that was not its own.
func (c *Cache) forget(f *blobFetch) {
	c.mu.Lock()
	if c.fetches[f.digest] == f {
		delete(c.fetches, f.digest)
	}
	c.mu.Unlock()
}

// fetchBlob does runFetch's work; it always closes f.ready and marks f
// done.
func (c *Cache) fetchBlob(f *blobFetch) (err error) {
	readyClosed := false
	defer func() {
		if err != nil {
			c.forget(f)
		}
		if !readyClosed {
			if f.fail == nil {
				f.fail = asRegError(err, "blob "+f.digest)
			}
			close(f.ready)
		}
		if err != nil {
			f.changed(func() { f.done, f.err = true, err })
		}
	}()
	tmp, err := os.CreateTemp(filepath.Join(c.dir, "tmp"), strings.TrimPrefix(f.digest, "sha256:")+"-*")
	if err != nil {
		return fmt.Errorf("creating a temp file: %w", err)
	}
	f.path = tmp.Name() // no reader before ready
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	what := "blob " + f.name + "@" + f.digest
	resp, base, err := c.origin.do(c.ctx, http.MethodGet, "/v2/"+f.name+"/blobs/"+f.digest, nil)
	c.stats.originBlobRequest(f.digest)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		f.fail = originError(resp, base, what, "BLOB_UNKNOWN")
		return f.fail
	}
	if resp.ContentLength > c.maxBlob {
		drain(resp)
		f.fail = tooBig(what, resp.ContentLength, c.maxBlob)
		return f.fail
	}
	f.size = resp.ContentLength
	readyClosed = true
	close(f.ready)

	h := sha256.New()
	if err := c.copyWithResume(f, resp, tmp, h); err != nil {
		return err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != f.digest {
		c.stats.mismatch()
		return &regError{Status: http.StatusBadGateway, Code: "DIGEST_INVALID",
			Message: fmt.Sprintf("%s: the origin sent %d bytes whose digest is %s: not stored", what, f.written, got)}
	}
	return c.storeBlob(f, tmp)
}

func tooBig(what string, size, limit int64) *regError {
	return &regError{Status: http.StatusBadGateway, Code: "SIZE_INVALID",
		Message: fmt.Sprintf("%s: %d bytes is more than the pull cache's limit of %d per blob", what, size, limit)}
}

// storeBlob makes the verified temp file the blob's file.
func (c *Cache) storeBlob(f *blobFetch, tmp *os.File) error {
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("writing the blob: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing the blob: %w", err)
	}
	final := c.blobPath(f.digest)
	if err := os.MkdirAll(filepath.Dir(final), 0o700); err != nil {
		return fmt.Errorf("storing the blob: %w", err)
	}
	var err error
	f.changed(func() {
		// Under f.mu: a reader opens either the temp file or the final one.
		if err = os.Rename(tmp.Name(), final); err == nil {
			f.path, f.done = final, true
		}
	})
	if err != nil {
		return fmt.Errorf("storing the blob: %w", err)
	}
	return nil
}

// copyWithResume copies the body into tmp, resuming with a Range request
// when the stream is cut before the blob's end, at most maxResumes times.
func (c *Cache) copyWithResume(f *blobFetch, resp *http.Response, tmp *os.File, h hash.Hash) error {
	resumes := 0
	for {
		err := c.copyBody(f, resp, tmp, h)
		resp.Body.Close()
		if err == nil && (f.size < 0 || f.written == f.size) {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("the origin ended the stream after %d of %d bytes", f.written, f.size)
		}
		for {
			var perm permanentError
			if errors.As(err, &perm) || c.ctx.Err() != nil || resumes == maxResumes {
				return fmt.Errorf("blob %s: %w", f.digest, err)
			}
			resumes++
			c.log.Warn("pull cache: blob stream cut; resuming", "digest", f.digest, "at", f.written, "err", err)
			select {
			case <-time.After(time.Duration(resumes) * 100 * time.Millisecond):
			case <-c.ctx.Done():
			}
			if resp, err = c.resume(f); err == nil {
				break
			}
			err = fmt.Errorf("resuming at byte %d: %w", f.written, err)
		}
	}
}

// resume asks the origin for the rest of the blob. An origin that ignores
// Range sends it whole: the part already written is skipped.
func (c *Cache) resume(f *blobFetch) (*http.Response, error) {
	hdr := http.Header{"Range": {fmt.Sprintf("bytes=%d-", f.written)}}
	resp, base, err := c.origin.do(c.ctx, http.MethodGet, "/v2/"+f.name+"/blobs/"+f.digest, hdr)
	c.stats.originBlobRequest(f.digest)
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		if !strings.HasPrefix(resp.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-", f.written)) {
			drain(resp)
			return nil, fmt.Errorf("%s answered the range %q", base, resp.Header.Get("Content-Range"))
		}
		return resp, nil
	case http.StatusOK:
		n, err := io.CopyN(io.Discard, resp.Body, f.written)
		c.stats.originBytes(f.digest, n)
		if err != nil {
			resp.Body.Close()
			return nil, err
		}
		return resp, nil
	default: // the origin no longer has it, or no longer lets us have it
		return nil, permanentError{originError(resp, base, "blob "+f.digest, "BLOB_UNKNOWN")}
	}
}

// permanentError is a fetch failure that another attempt would repeat.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

// copyBody appends the body to tmp, hashing it and waking the readers.
// A body that sends nothing for the stall timeout is abandoned.
func (c *Cache) copyBody(f *blobFetch, resp *http.Response, tmp *os.File, h hash.Hash) error {
	stalled := time.AfterFunc(c.stall, func() { resp.Body.Close() })
	defer stalled.Stop()
	buf := make([]byte, copyBuffer)
	for {
		n, rerr := resp.Body.Read(buf)
		stalled.Reset(c.stall)
		if n > 0 {
			c.stats.originBytes(f.digest, int64(n))
			if f.written+int64(n) > c.maxBlob {
				return permanentError{tooBig("blob "+f.digest, f.written+int64(n), c.maxBlob)}
			}
			if _, err := tmp.Write(buf[:n]); err != nil {
				return permanentError{fmt.Errorf("writing the temp file: %w", err)}
			}
			h.Write(buf[:n])
			f.changed(func() { f.written += int64(n) })
		}
		if errors.Is(rerr, io.EOF) {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// countingReadSeeker counts what http.ServeContent reads of a file.
type countingReadSeeker struct {
	io.ReadSeeker
	count func(int)
}

func (r *countingReadSeeker) Read(p []byte) (int, error) {
	n, err := r.ReadSeeker.Read(p)
	r.count(n)
	return n, err
}
