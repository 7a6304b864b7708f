package main

import (
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"sync"
	"time"
)

// countingProxy stands in front of berth's registry and counts the blob
// GETs that reach it and the bytes it sends back, by digest.
type countingProxy struct {
	addr string
	srv  *http.Server

	mu    sync.Mutex
	blobs map[string]*blobCount
}

type blobCount struct {
	requests int64
	bytes    int64
}

var blobPath = regexp.MustCompile(`^/v2/.+/blobs/(sha256:[0-9a-f]{64})$`)

func startProxy(target string) (*countingProxy, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1 // stream blobs as they come
	p := &countingProxy{addr: ln.Addr().String(), blobs: map[string]*blobCount{}}
	p.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m := blobPath.FindStringSubmatch(r.URL.Path)
		if r.Method != http.MethodGet || m == nil {
			rp.ServeHTTP(w, r)
			return
		}
		cw := &countingWriter{ResponseWriter: w}
		rp.ServeHTTP(cw, r)
		p.mu.Lock()
		c := p.blobs[m[1]]
		if c == nil {
			c = &blobCount{}
			p.blobs[m[1]] = c
		}
		c.requests++
		c.bytes += cw.n
		p.mu.Unlock()
	})}
	go p.srv.Serve(ln)
	return p, nil
}

// take returns the counts since the last take and starts again.
func (p *countingProxy) take() map[string]blobCount {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]blobCount{}
	for d, c := range p.blobs {
		out[d] = *c
	}
	p.blobs = map[string]*blobCount{}
	return out
}

func (p *countingProxy) close() { p.srv.Close() }

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (w *countingWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
