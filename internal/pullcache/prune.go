package pullcache

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// PruneResult says what Prune removed.
type PruneResult struct {
	Blobs     int   `json:"blobs"`
	Manifests int   `json:"manifests"`
	Tags      int   `json:"tags"`
	Bytes     int64 `json:"bytes"`
}

var hexName = regexp.MustCompile(`^[a-f0-9]{64}$`)

// Prune removes the blobs and manifests not served nor fetched for
// olderThan, except those keep (nil: none) says to keep; keep gets a
// digest ("sha256:..."). Blobs being fetched are left alone, and so is
// any file the cache did not make. Tag records whose manifest is gone
// go too. A pull that needs a pruned blob later fetches it again.
func (c *Cache) Prune(olderThan time.Duration, keep func(digest string) bool) (PruneResult, error) {
	var res PruneResult
	cutoff := c.timeNow().Add(-olderThan)
	n, bytes, err := c.pruneDir(c.blobPath, filepath.Join(c.dir, "blobs", "sha256"), cutoff, keep)
	res.Blobs, res.Bytes = n, bytes
	if err != nil {
		return res, fmt.Errorf("pruning blobs: %w", err)
	}
	n, bytes, err = c.pruneDir(c.manifestPath, filepath.Join(c.dir, "manifests", "sha256"), cutoff, keep)
	res.Manifests, res.Bytes = n, res.Bytes+bytes
	if err != nil {
		return res, fmt.Errorf("pruning manifests: %w", err)
	}
	if res.Tags, err = c.pruneTags(); err != nil {
		return res, fmt.Errorf("pruning tags: %w", err)
	}
	if res.Blobs+res.Manifests+res.Tags > 0 {
		c.log.Info("pull cache: pruned", "blobs", res.Blobs, "manifests", res.Manifests, "tags", res.Tags, "bytes", res.Bytes)
	}
	return res, nil
}

// pruneDir prunes <root>/<2 hex>/<64 hex> files.
func (c *Cache) pruneDir(pathOf func(string) string, root string, cutoff time.Time, keep func(string) bool) (n int, bytes int64, err error) {
	prefixes, err := os.ReadDir(root)
	if err != nil {
		return 0, 0, err
	}
	for _, p := range prefixes {
		if !p.IsDir() || len(p.Name()) != 2 {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(root, p.Name()))
		if err != nil {
			return n, bytes, err
		}
		for _, e := range ents {
			if !hexName.MatchString(e.Name()) || e.Name()[:2] != p.Name() {
				continue
			}
			digest := "sha256:" + e.Name()
			if keep != nil && keep(digest) {
				continue
			}
			size, removed, err := c.pruneFile(pathOf(digest), digest, cutoff)
			if err != nil {
				return n, bytes, err
			}
			if removed {
				n++
				bytes += size
			}
		}
	}
	return n, bytes, nil
}

// pruneFile removes one file if it is old enough and not being fetched;
// under c.mu, so a request either opened it before or fetches it again.
func (c *Cache) pruneFile(path, digest string, cutoff time.Time) (int64, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fetches[digest] != nil {
		return 0, false, nil
	}
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if !fi.ModTime().Before(cutoff) {
		return 0, false, nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, false, err
	}
	return fi.Size(), true, nil
}

// pruneTags removes tag records whose manifest is no longer here.
func (c *Cache) pruneTags() (int, error) {
	dir := filepath.Join(c.dir, "tags")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		if filepath.Ext(e.Name()) != ".json" || !hexName.MatchString(e.Name()[:len(e.Name())-len(".json")]) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		var rec tagRecord
		if json.Unmarshal(data, &rec) == nil && digestRE.MatchString(rec.Digest) {
			if _, err := os.Stat(c.manifestPath(rec.Digest)); err == nil {
				continue
			}
		}
		if err := os.Remove(path); err == nil {
			n++
		}
	}
	return n, nil
}
