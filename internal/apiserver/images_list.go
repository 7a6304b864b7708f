package apiserver

import (
	"context"
	"errors"
	"net/http"
	"sort"

	"berth/api"
	"berth/internal/store"
)

// ImageLister lists berth's registry (internal/registry's Registry, which
// is also the server's ImageResolver).
type ImageLister interface {
	// ListImages calls each for every tag of repo ("": of every
	// repository); a repository the registry lacks wraps api.ErrNoRepository.
	ListImages(ctx context.Context, repo string, each func(repo, tag, digest string, size int64)) error
	// ImageSize is the size of the image at digest in repo (ok false: the
	// registry does not have it).
	ImageSize(ctx context.Context, repo, digest string) (size int64, ok bool, err error)
}

// imageEntry is one row of GET /v1/images (internal/client.Image).
type imageEntry struct {
	Repository string          `json:"repository"`
	Tag        string          `json:"tag,omitempty"`
	Digest     string          `json:"digest"`
	Size       int64           `json:"size"`
	Revisions  []imageRevision `json:"revisions"`
	Instances  []imageInstance `json:"instances"`
}

type imageRevision struct {
	App      string `json:"app"`
	Revision int64  `json:"revision"`
}

type imageInstance struct {
	Name string `json:"name"`
	App  string `json:"app"`
	Node string `json:"node,omitempty"`
}

// listImages lists the tags of berth's registry, each with the apps whose
// current revision and the instances that run its digest. A digest an
// app or instance runs that no tag names any more is listed without a tag.
func (s *Server) listImages(w http.ResponseWriter, r *http.Request) {
	lister, ok := s.Images.(ImageLister)
	if !ok {
		writeError(w, http.StatusNotFound, "", "this berth server has no image registry")
		return
	}
	repo := r.URL.Query().Get("repo")
	if repo != "" {
		if name, _, ok := api.RegistryImage(repo); !ok || name != repo {
			writeError(w, http.StatusBadRequest, "repo", "repo: %q is not a repository of berth's registry (a name like my/app, without host, tag or digest)", repo)
			return
		}
	}
	var rows []*imageEntry
	err := lister.ListImages(r.Context(), repo, func(repo, tag, digest string, size int64) {
		rows = append(rows, &imageEntry{Repository: repo, Tag: tag, Digest: digest, Size: size})
	})
	switch {
	case errors.Is(err, api.ErrNoRepository):
		writeError(w, http.StatusNotFound, "repo", "berth's registry has no repository %s (berth image ls lists them)", repo)
		return
	case err != nil:
		s.Log.Error("list images", "repo", repo, "err", err)
		writeError(w, http.StatusServiceUnavailable, "", "could not list berth's registry: %v", err)
		return
	}
	rows, err = s.imageUses(r.Context(), lister, repo, rows)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	sort.SliceStable(rows, func(i, j int) bool {
		a, b := rows[i], rows[j]
		if a.Repository != b.Repository {
			return a.Repository < b.Repository
		}
		if (a.Tag == "") != (b.Tag == "") {
			return b.Tag == "" // untagged digests after the tags
		}
		return a.Tag < b.Tag
	})
	out := api.List[imageEntry]{Items: []imageEntry{}}
	for _, row := range rows {
		out.Items = append(out.Items, *row)
	}
	writeJSON(w, http.StatusOK, out)
}

// imageUses adds to the rows the app revisions and instances that run
// them, and rows for the digests they run that no tag names.
func (s *Server) imageUses(ctx context.Context, lister ImageLister, repo string, rows []*imageEntry) ([]*imageEntry, error) {
	apps, _, err := store.Apps.List(ctx, s.Store)
	if err != nil {
		return nil, err
	}
	insts, _, err := store.Instances.List(ctx, s.Store)
	if err != nil {
		return nil, err
	}
	type key struct{ repo, digest string }
	byKey := map[key][]*imageEntry{}
	for _, row := range rows {
		k := key{row.Repository, row.Digest}
		byKey[k] = append(byKey[k], row)
	}
	// rowsFor finds the rows of an image an app or instance runs, adding
	// an untagged one when the registry still has the manifest.
	rowsFor := func(image, digest string) []*imageEntry {
		name, _, ok := api.RegistryImage(image)
		if !ok || digest == "" || (repo != "" && name != repo) {
			return nil
		}
		k := key{name, digest}
		if rs, ok := byKey[k]; ok {
			return rs
		}
		size, ok, err := lister.ImageSize(ctx, name, digest)
		if err != nil || !ok {
			byKey[k] = nil // gone (or unreadable): nothing to show it on
			return nil
		}
		row := &imageEntry{Repository: name, Digest: digest, Size: size}
		rows = append(rows, row)
		byKey[k] = []*imageEntry{row}
		return byKey[k]
	}
	sort.Slice(apps, func(i, j int) bool { return apps[i].Spec.Name < apps[j].Spec.Name })
	for _, app := range apps {
		for _, row := range rowsFor(app.Spec.Image, app.ImageDigest) {
			row.Revisions = append(row.Revisions, imageRevision{App: app.Spec.Name, Revision: app.TemplateRevision})
		}
	}
	sort.Slice(insts, func(i, j int) bool { return insts[i].Name < insts[j].Name })
	for _, in := range insts {
		for _, row := range rowsFor(in.Spec.Image, in.ImageDigest) {
			row.Instances = append(row.Instances, imageInstance{Name: in.Name, App: in.App, Node: in.Node})
		}
	}
	for _, row := range rows {
		if row.Revisions == nil {
			row.Revisions = []imageRevision{}
		}
		if row.Instances == nil {
			row.Instances = []imageInstance{}
		}
	}
	return rows, nil
}
