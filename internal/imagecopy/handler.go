package imagecopy

import (
	"io"
	"net/http"
	"strconv"
	"sync"
)

// HandlerClient returns a client whose requests are served by h in
// process, with no listener: how the server pushes into its own
// registry. The response body streams as h writes it.
func HandlerClient(h http.Handler) *http.Client {
	return &http.Client{Transport: handlerTransport{h}}
}

type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	sreq := req.Clone(req.Context())
	sreq.RequestURI = req.URL.RequestURI()
	sreq.RemoteAddr = "127.0.0.1:0"
	if sreq.Host == "" {
		sreq.Host = req.URL.Host
	}
	if sreq.Body == nil {
		sreq.Body = http.NoBody
	}
	pr, pw := io.Pipe()
	w := &pipeWriter{header: http.Header{}, body: pw, ready: make(chan struct{}),
		resp: &http.Response{Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Body: pr, Request: req, ContentLength: -1}}
	go func() {
		defer func() {
			if p := recover(); p != nil {
				w.WriteHeader(http.StatusInternalServerError)
			}
			w.WriteHeader(http.StatusOK) // a handler that wrote nothing
			pw.Close()
		}()
		t.h.ServeHTTP(w, sreq)
	}()
	select {
	case <-w.ready:
		return w.resp, nil
	case <-req.Context().Done():
		pr.CloseWithError(req.Context().Err())
		return nil, req.Context().Err()
	}
}

// pipeWriter is the handler's ResponseWriter: the header is the
// response's once written, the body goes through a pipe.
type pipeWriter struct {
	header http.Header
	body   *io.PipeWriter
	resp   *http.Response
	once   sync.Once
	ready  chan struct{}
}

func (w *pipeWriter) Header() http.Header { return w.header }

func (w *pipeWriter) WriteHeader(code int) {
	w.once.Do(func() {
		w.resp.StatusCode = code
		w.resp.Status = strconv.Itoa(code) + " " + http.StatusText(code)
		w.resp.Header = w.header.Clone()
		if n, err := strconv.ParseInt(w.header.Get("Content-Length"), 10, 64); err == nil {
			w.resp.ContentLength = n
		}
		if w.resp.Request.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified {
			w.resp.ContentLength = 0
		}
		close(w.ready)
	})
}

func (w *pipeWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(p)
}

// Flush is a no-op: every Write reaches the reader at once.
func (w *pipeWriter) Flush() {}
