package registry

import (
	"context"
	"net/http"
	"net/http/httputil"
	"net/url"

	"github.com/distribution/distribution/v3/registry/api/errcode"
)

// Servers that share the storage share one collection, run by the
// leader, and its read-only window must hold on all of them. Rather than
// a gate spread over the cluster, the requests the window guards
// (manifest puts and deletes, blob deletes, mounts: few and small) are
// all served by the leader: the others forward them there. Pulls and
// layer uploads, nearly all the bytes, are served by whichever server
// the client reached.

// forwardedHeader marks a request one server sent on to the leader, so
// that a leadership that moved meanwhile cannot bounce it back and forth.
const forwardedHeader = "Berth-Registry-Forwarded"

// Leader names the server that collects: its base URL, or "" when it is
// this server (or none leads: then this server serves the request).
type Leader func(ctx context.Context) (string, error)

// ForwardGuarded serves the guarded requests on the leader and the rest
// with next.
func ForwardGuarded(next http.Handler, leader Leader) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !guarded(r) || r.Header.Get(forwardedHeader) != "" {
			next.ServeHTTP(w, r)
			return
		}
		base, err := leader(r.Context())
		if err != nil {
			w.Header().Set("Retry-After", "1")
			serveError(w, errcode.ErrorCodeUnavailable.WithMessage("finding the server that takes manifest writes: "+err.Error()))
			return
		}
		if base == "" {
			next.ServeHTTP(w, r)
			return
		}
		target, err := url.Parse(base)
		if err != nil {
			serveError(w, errcode.ErrorCodeUnavailable.WithMessage("the leader's URL "+base+": "+err.Error()))
			return
		}
		proxy := &httputil.ReverseProxy{
			Rewrite: func(p *httputil.ProxyRequest) {
				p.SetURL(target)
				p.Out.Host = p.In.Host // Location headers stay relative to what the client reached
				p.Out.Header.Set(forwardedHeader, "1")
			},
			ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
				w.Header().Set("Retry-After", "1")
				serveError(w, errcode.ErrorCodeUnavailable.WithMessage("the leading server "+base+" takes manifest writes and did not answer: "+err.Error()))
			},
		}
		proxy.ServeHTTP(w, r)
	})
}
