package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/storage"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// Distribution's storage layout, which the collection reads directly for
// the write times of links (Distribution's own API has no times). The
// registry's tests pin it (TestStorageIsUnderDir).
const (
	reposRoot = "/docker/registry/v2/repositories"
	blobsRoot = "/docker/registry/v2/blobs/sha256"
)

// gcStore is the collection's view of the storage: the driver for listings
// and times, Distribution's namespace for tags and its Vacuum for deletes.
type gcStore struct {
	drv storagedriver.StorageDriver
	ns  distribution.Namespace
}

func newGCStore(ctx context.Context, dir string) (*gcStore, error) {
	drv := filesystem.New(filesystem.DriverParameters{RootDirectory: dir, MaxThreads: 100})
	ns, err := storage.NewRegistry(ctx, drv, storage.EnableDelete)
	if err != nil {
		return nil, err
	}
	return &gcStore{drv: drv, ns: ns}, nil
}

// repoScan is one repository as the collection sees it.
type repoScan struct {
	name      string
	manifests []manifestEntry
	tags      map[string]string    // tag -> the digest it names now
	layers    map[string]time.Time // blob digest -> when the repository's link to it was written
}

// scanRepos reads every repository's manifests, tags and layer links,
// several repositories at once.
func (s *gcStore) scanRepos(ctx context.Context, refs *refCache) ([]repoScan, error) {
	enum, ok := s.ns.(distribution.RepositoryEnumerator)
	if !ok {
		return nil, errors.New("the registry's storage cannot list repositories")
	}
	var names []string
	err := enum.Enumerate(ctx, func(name string) error {
		names = append(names, name)
		return nil
	})
	if err != nil && !notFound(err) { // not found: no repository yet
		return nil, err
	}
	repos := make([]repoScan, len(names))
	err = parallel(ctx, len(names), func(i int) (err error) {
		if repos[i], err = s.scanRepo(ctx, names[i], refs); err != nil {
			return fmt.Errorf("repository %s: %w", names[i], err)
		}
		return nil
	})
	return repos, err
}

// refCache holds what manifests refer to, by digest: content by digest
// never changes, so a manifest is read once.
type refCache struct {
	mu   sync.Mutex
	refs map[string]manifestRefs
}

func (c *refCache) get(ctx context.Context, s *gcStore, d string) manifestRefs {
	c.mu.Lock()
	m, ok := c.refs[d]
	c.mu.Unlock()
	if ok {
		return m
	}
	m = s.readRefs(ctx, d)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.refs == nil {
		c.refs = map[string]manifestRefs{}
	}
	c.refs[d] = m
	return m
}

func (s *gcStore) scanRepo(ctx context.Context, name string, refs *refCache) (repoScan, error) {
	root := path.Join(reposRoot, name)
	r := repoScan{name: name, tags: map[string]string{}, layers: map[string]time.Time{}}
	pushed := map[string]time.Time{}
	revisions, err := s.links(ctx, path.Join(root, "_manifests/revisions/sha256"))
	if err != nil {
		return r, err
	}
	for d, at := range revisions {
		pushed[d] = at
	}
	tagDirs, err := s.list(ctx, path.Join(root, "_manifests/tags"))
	if err != nil {
		return r, err
	}
	for _, dir := range tagDirs {
		d, at, err := s.readLink(ctx, path.Join(dir, "current/link"))
		if notFound(err) {
			continue
		}
		if err != nil {
			return r, err
		}
		r.tags[path.Base(dir)] = d
		if p, ok := pushed[d]; ok && at.After(p) {
			pushed[d] = at // the tag pushed again: the manifest is as young as that push
		}
	}
	if r.layers, err = s.links(ctx, path.Join(root, "_layers/sha256")); err != nil {
		return r, err
	}
	for d, at := range pushed {
		r.manifests = append(r.manifests, manifestEntry{Repo: name, Digest: d, Pushed: at, Refs: refs.get(ctx, s, d)})
	}
	return r, nil
}

// links lists dir/<hex>/link and returns sha256:<hex> -> the link's write time.
func (s *gcStore) links(ctx context.Context, dir string) (map[string]time.Time, error) {
	entries, err := s.list(ctx, dir)
	if err != nil {
		return nil, err
	}
	out := make(map[string]time.Time, len(entries))
	for _, e := range entries {
		fi, err := s.drv.Stat(ctx, path.Join(e, "link"))
		if notFound(err) {
			continue // a directory left by a delete
		}
		if err != nil {
			return nil, err
		}
		out["sha256:"+path.Base(e)] = fi.ModTime()
	}
	return out, nil
}

// list is the driver's List, with a missing directory empty.
func (s *gcStore) list(ctx context.Context, dir string) ([]string, error) {
	entries, err := s.drv.List(ctx, dir)
	if notFound(err) {
		return nil, nil
	}
	return entries, err
}

func (s *gcStore) readLink(ctx context.Context, p string) (string, time.Time, error) {
	b, err := s.drv.GetContent(ctx, p)
	if err != nil {
		return "", time.Time{}, err
	}
	fi, err := s.drv.Stat(ctx, p)
	if err != nil {
		return "", time.Time{}, err
	}
	return strings.TrimSpace(string(b)), fi.ModTime(), nil
}

// blobPath is where a blob's content is kept.
func blobPath(d string) string {
	hex := strings.TrimPrefix(d, "sha256:")
	if len(hex) < 2 {
		return path.Join(blobsRoot, "invalid", hex)
	}
	return path.Join(blobsRoot, hex[:2], hex, "data")
}

// manifestRefs is what a manifest or index refers to.
type manifestRefs struct {
	Blobs    []string // config, layers (and the blobs of an artifact manifest)
	Children []string // the manifests of an index
	Subject  string   // the manifest it refers to (a signature's image), "" for none
	Err      error    // its content could not be read or parsed
}

// readRefs reads the references of manifest d from its content. Every
// manifest Distribution accepts (OCI and Docker schema 2, images and
// indexes) lists them under these fields.
func (s *gcStore) readRefs(ctx context.Context, d string) manifestRefs {
	b, err := s.drv.GetContent(ctx, blobPath(d))
	if err != nil {
		return manifestRefs{Err: fmt.Errorf("reading manifest %s: %w", d, err)}
	}
	var m struct {
		Config    *struct{ Digest string }  `json:"config"`
		Layers    []struct{ Digest string } `json:"layers"`
		Blobs     []struct{ Digest string } `json:"blobs"`
		Manifests []struct{ Digest string } `json:"manifests"`
		Subject   *struct{ Digest string }  `json:"subject"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return manifestRefs{Err: fmt.Errorf("manifest %s is not JSON: %w", d, err)}
	}
	var out manifestRefs
	if m.Config != nil {
		out.Blobs = append(out.Blobs, m.Config.Digest)
	}
	for _, l := range append(m.Layers, m.Blobs...) {
		out.Blobs = append(out.Blobs, l.Digest)
	}
	for _, c := range m.Manifests {
		out.Children = append(out.Children, c.Digest)
	}
	if m.Subject != nil {
		out.Subject = m.Subject.Digest
	}
	return out
}

// scanBlobs lists every blob with its size and write time.
func (s *gcStore) scanBlobs(ctx context.Context) ([]blobEntry, error) {
	prefixes, err := s.list(ctx, blobsRoot)
	if err != nil {
		return nil, err
	}
	var out []blobEntry
	for _, p := range prefixes {
		dirs, err := s.list(ctx, p)
		if err != nil {
			return nil, err
		}
		for _, dir := range dirs {
			fi, err := s.drv.Stat(ctx, path.Join(dir, "data"))
			if notFound(err) {
				continue
			}
			if err != nil {
				return nil, err
			}
			out = append(out, blobEntry{Digest: "sha256:" + path.Base(dir), Size: fi.Size(), Written: fi.ModTime()})
		}
	}
	return out, nil
}

// deleteManifest removes manifest d from a repository: the tags that name
// it now, its entries in every tag's history, and its revision link.
func (s *gcStore) deleteManifest(ctx context.Context, r repoScan, d string) (untagged int, err error) {
	named, err := reference.WithName(r.name)
	if err != nil {
		return 0, err
	}
	repo, err := s.ns.Repository(ctx, named)
	if err != nil {
		return 0, err
	}
	var tags []string
	for tag, cur := range r.tags {
		tags = append(tags, tag)
		if cur != d {
			continue
		}
		if err := repo.Tags(ctx).Untag(ctx, tag); err != nil && !notFound(err) {
			return untagged, fmt.Errorf("untag %s:%s: %w", r.name, tag, err)
		}
		untagged++
	}
	dg, err := digest.Parse(d)
	if err != nil {
		return untagged, err
	}
	if err := storage.NewVacuum(ctx, s.drv).RemoveManifest(r.name, dg, tags); err != nil && !notFound(err) {
		return untagged, fmt.Errorf("delete manifest %s@%s: %w", r.name, d, err)
	}
	return untagged, nil
}

// deleteBlob removes a blob and the repositories' links to it.
func (s *gcStore) deleteBlob(ctx context.Context, repos []repoScan, d string) error {
	v := storage.NewVacuum(ctx, s.drv)
	dg, err := digest.Parse(d)
	if err != nil {
		return err
	}
	for _, r := range repos {
		if _, ok := r.layers[d]; ok {
			if err := v.RemoveLayer(r.name, dg); err != nil && !notFound(err) {
				return fmt.Errorf("delete the link of %s to blob %s: %w", r.name, d, err)
			}
		}
	}
	if err := v.RemoveBlob(d); err != nil && !notFound(err) {
		return fmt.Errorf("delete blob %s: %w", d, err)
	}
	return nil
}

func notFound(err error) bool {
	return errors.As(err, new(storagedriver.PathNotFoundError)) || errors.As(err, new(distribution.ErrTagUnknown))
}
