package registry

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"

	"berth/api"
)

// manifestTypes are the manifests a Docker engine pulls, any of which a
// tag may name: an image index or list first, so that a multi-platform
// tag resolves to its index (the engine picks its platform from it).
var manifestTypes = []string{
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}

// Resolve returns the digest of the manifest that repository name's tag
// names in this registry: ErrNoRepository when the registry has no such
// repository, ErrNoTag when it has the repository but not the tag. It
// asks the registry's own handler, in process and past the token check:
// the server's question, not a client's.
func (g *Registry) Resolve(ctx context.Context, name, tag string) (string, error) {
	g.gc.deletes.RLock() // a collection deleting manifests waits, and spares what this names
	defer g.gc.deletes.RUnlock()
	rec, err := g.ask(ctx, http.MethodHead, "/v2/"+name+"/manifests/"+url.PathEscape(tag))
	if err != nil {
		return "", fmt.Errorf("resolve %s:%s: %w", name, tag, err)
	}
	switch rec.Code {
	case http.StatusOK:
		d := rec.Header().Get("Docker-Content-Digest")
		if d == "" {
			return "", fmt.Errorf("resolve %s:%s: the registry answered without a digest", name, tag)
		}
		g.gc.noteResolved(d)
		return d, nil
	case http.StatusNotFound:
		tags, err := g.ask(ctx, http.MethodGet, "/v2/"+name+"/tags/list")
		if err != nil {
			return "", fmt.Errorf("resolve %s:%s: %w", name, tag, err)
		}
		if tags.Code == http.StatusOK {
			return "", fmt.Errorf("%s:%s: %w", name, tag, api.ErrNoTag)
		}
		return "", fmt.Errorf("%s: %w", name, api.ErrNoRepository)
	default:
		return "", fmt.Errorf("resolve %s:%s: the registry answered %d", name, tag, rec.Code)
	}
}

// ask serves one request of the server's own from the registry.
func (g *Registry) ask(ctx context.Context, method, path string) (*httptest.ResponseRecorder, error) {
	req, err := http.NewRequestWithContext(logContext{Context: ctx, logger: g.logger}, method, path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", strings.Join(manifestTypes, ", "))
	rec := httptest.NewRecorder()
	g.app.ServeHTTP(rec, req)
	return rec, nil
}
