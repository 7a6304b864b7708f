package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/distribution/distribution/v3"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"

	"berth/api"
)

// listPage is how many repositories or tags one request of the catalog or
// tags API asks for.
var listPageSize = 1000

// ListImages calls each for every tag of repository repo, or of every
// repository when repo is "", by repository then tag, with the digest of
// the manifest it names and the image's size (manifest, config and
// layers; for an index, every manifest in it too). A repository the
// registry lacks is an error wrapping api.ErrNoRepository. Like Resolve it
// asks the registry's own handler, in process (Distribution's tags and
// manifests APIs); the repositories come from its storage.
func (g *Registry) ListImages(ctx context.Context, repo string, each func(repo, tag, digest string, size int64)) error {
	repos := []string{repo}
	if repo == "" {
		var err error
		if repos, err = g.repositories(ctx); err != nil {
			return fmt.Errorf("list the registry's repositories: %w", err)
		}
	}
	sizes := map[string]int64{} // by digest: tags often share one
	for _, name := range repos {
		tags, err := g.pages(ctx, "/v2/"+name+"/tags/list", "tags")
		if repo == "" && errors.Is(err, api.ErrNoRepository) {
			continue // listed, but every tag is gone
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		sort.Strings(tags)
		for _, tag := range tags {
			d, size, err := g.image(ctx, name, tag, sizes)
			if err == errGone {
				continue // deleted since the tags were listed
			}
			if err != nil {
				return fmt.Errorf("%s:%s: %w", name, tag, err)
			}
			each(name, tag, d, size)
		}
	}
	return nil
}

// ImageSize is the size of the image whose manifest is digest in repo;
// ok is false when the registry does not have it.
func (g *Registry) ImageSize(ctx context.Context, repo, digest string) (size int64, ok bool, err error) {
	_, size, err = g.image(ctx, repo, digest, map[string]int64{})
	switch {
	case err == errGone:
		return 0, false, nil
	case err != nil:
		return 0, false, fmt.Errorf("%s@%s: %w", repo, digest, err)
	}
	return size, true, nil
}

// errGone is a manifest or repository the registry does not have.
var errGone = errors.New("not in the registry")

// image reads the manifest ref (a tag or digest) names: its digest, and
// the image's size.
func (g *Registry) image(ctx context.Context, repo, ref string, sizes map[string]int64) (string, int64, error) {
	rec, err := g.ask(ctx, http.MethodGet, "/v2/"+repo+"/manifests/"+url.PathEscape(ref))
	if err != nil {
		return "", 0, err
	}
	switch rec.Code {
	case http.StatusOK:
	case http.StatusNotFound:
		return "", 0, errGone
	default:
		return "", 0, fmt.Errorf("the registry answered %d to a manifest's GET", rec.Code)
	}
	d := rec.Header().Get("Docker-Content-Digest")
	if size, ok := sizes[d]; ok {
		return d, size, nil
	}
	var m struct {
		Config    *struct{ Size int64 }  `json:"config"`
		Layers    []struct{ Size int64 } `json:"layers"`
		Manifests []struct {
			Digest string `json:"digest"`
		} `json:"manifests"`
	}
	body := rec.Body.Bytes()
	if err := json.Unmarshal(body, &m); err != nil {
		return "", 0, fmt.Errorf("manifest %s: %w", d, err)
	}
	size := int64(len(body))
	if m.Config != nil {
		size += m.Config.Size
	}
	for _, l := range m.Layers {
		size += l.Size
	}
	for _, child := range m.Manifests { // an index: its images (one level)
		if _, s, err := g.image(ctx, repo, child.Digest, sizes); err == nil {
			size += s
		}
	}
	sizes[d] = size
	return d, size, nil
}

// repositories lists the registry's repositories from its storage: the
// catalog API answers nothing with berth's configuration (its
// Catalog.MaxEntries is 0).
func (g *Registry) repositories(ctx context.Context) ([]string, error) {
	enum, ok := g.referrers.ns.(distribution.RepositoryEnumerator)
	if !ok {
		return nil, errors.New("the registry's storage cannot list repositories")
	}
	var repos []string
	err := enum.Enumerate(ctx, func(name string) error {
		repos = append(repos, name)
		return nil
	})
	if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
		return nil, err // (no repository yet: the path is not there)
	}
	sort.Strings(repos)
	return repos, nil
}

// pages reads every page of a tags list (Distribution pages
// with n and last, and says there is more with a Link header).
func (g *Registry) pages(ctx context.Context, path, field string) ([]string, error) {
	var all []string
	next := path + "?n=" + fmt.Sprint(listPageSize)
	for next != "" {
		rec, err := g.ask(ctx, http.MethodGet, next)
		if err != nil {
			return nil, err
		}
		switch rec.Code {
		case http.StatusOK:
		case http.StatusNotFound:
			return nil, api.ErrNoRepository
		default:
			return nil, fmt.Errorf("the registry answered %d to GET %s: %s", rec.Code, next, strings.TrimSpace(rec.Body.String()))
		}
		var page map[string]json.RawMessage
		if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil {
			return nil, fmt.Errorf("GET %s: %w", path, err)
		}
		var names []string
		if raw, ok := page[field]; ok && string(raw) != "null" {
			if err := json.Unmarshal(raw, &names); err != nil {
				return nil, fmt.Errorf("GET %s: %w", path, err)
			}
		}
		all = append(all, names...)
		next = nextPage(rec.Header().Get("Link"))
	}
	return all, nil
}

// nextPage is the target of a Link header's rel="next": `</v2/...>; rel="next"`.
func nextPage(link string) string {
	target, params, ok := strings.Cut(link, ";")
	if !ok || !strings.Contains(params, `rel="next"`) {
		return ""
	}
	target = strings.Trim(strings.TrimSpace(target), "<>")
	if u, err := url.Parse(target); err == nil && u.IsAbs() {
		target = u.RequestURI() // Distribution may name the host: ask the handler for the path
	}
	return target
}
