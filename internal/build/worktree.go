package build

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// WriteClean writes the same context as WriteCommit, byte for byte, from
// the files of a work tree that git status found clean: the tracked
// files are read from the disk instead of being unpacked from git's
// objects, which is most of a build's set-up for a large tree (git
// archive inflates every blob). Where the disk may differ from what git
// archive writes (attributes that filter, substitute or leave out files;
// submodules), it is WriteCommit.
func (s Source) WriteClean(ctx context.Context, w io.Writer, max int64) (Info, error) {
	files, ok, err := s.trackedFiles(ctx)
	if err != nil {
		return Info{}, err
	}
	if !ok {
		return s.WriteCommit(ctx, w, max)
	}
	// The .dockerignore as committed: in a clean tree, the one on the disk
	// when git tracks it.
	ign := &ignore{}
	if slices.ContainsFunc(files, func(f tracked) bool { return f.path == s.Prefix+DockerIgnore }) {
		if ign, err = readIgnoreFile(filepath.Join(s.Dir, DockerIgnore)); err != nil {
			return Info{}, err
		}
	}
	c := newContextWriter(w, max)
	dirs := map[string]bool{}
	for _, f := range files {
		name := strings.TrimPrefix(f.path, s.Prefix)
		// git archive writes each directory before its first entry.
		for _, d := range parents(name) {
			if !dirs[d] {
				dirs[d] = true
				if !ign.excluded(d) {
					if err := c.add(d, fs.ModeDir|0o775, 0, "", nil); err != nil {
						return Info{}, err
					}
				}
			}
		}
		if ign.excluded(name) {
			continue
		}
		if err := s.addTracked(c, name, f); err != nil {
			return Info{}, err
		}
	}
	return c.close()
}

// tracked is one entry of the index: its mode as git records it and its
// path from the top of the work tree.
type tracked struct {
	mode string // 100644, 100755, 120000 (symlink), 160000 (submodule)
	path string
}

// trackedFiles lists the tracked files under the source's directory, in
// the order git archive writes them. ok is false when the disk cannot
// stand in for git archive.
func (s Source) trackedFiles(ctx context.Context) ([]tracked, bool, error) {
	if _, err := os.Stat(filepath.Join(s.commonDir, "info", "attributes")); s.commonDir == "" || err == nil {
		return nil, false, nil
	}
	if v, _ := git(ctx, s.Root, "config", "core.attributesFile"); v != "" {
		return nil, false, nil
	}
	args := []string{"ls-files", "--stage", "-z"}
	if s.Prefix != "" {
		args = append(args, "--", s.Prefix)
	}
	out, err := git(ctx, s.Root, args...)
	if err != nil {
		return nil, false, err
	}
	var files []tracked
	for _, rec := range strings.Split(strings.TrimSuffix(out, "\x00"), "\x00") {
		if rec == "" {
			continue
		}
		meta, p, found := strings.Cut(rec, "\t") // "<mode> <object> <stage>\t<path>"
		mode, _, _ := strings.Cut(meta, " ")
		if !found || path.Base(p) == ".gitattributes" || (mode != "100644" && mode != "100755" && mode != "120000") ||
			(p == s.Prefix+DockerIgnore && mode == "120000") { // git archive's .dockerignore would be the link's target text
			return nil, false, nil
		}
		files = append(files, tracked{mode: mode, path: p})
	}
	return files, true, nil
}

// addTracked writes one tracked file as git archive does: 0664 or 0775
// (its default umask 002), a symlink's target as committed.
func (s Source) addTracked(c *contextWriter, name string, f tracked) error {
	p := filepath.Join(s.Root, filepath.FromSlash(f.path))
	if f.mode == "120000" {
		link, err := os.Readlink(p)
		if err != nil {
			return err
		}
		return c.add(name, fs.ModeSymlink|0o777, 0, link, nil)
	}
	file, err := os.Open(p)
	if err != nil {
		return err
	}
	defer file.Close()
	st, err := file.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is tracked as a file but is not one on the disk", f.path)
	}
	mode := fs.FileMode(0o664)
	if f.mode == "100755" {
		mode = 0o775
	}
	return c.add(name, mode, st.Size(), "", file)
}

// committedIgnore is the .dockerignore of the commit at the source's
// directory, nil when it has none.
func (s Source) committedIgnore(ctx context.Context) ([]string, error) {
	ignPath := s.Prefix + DockerIgnore
	if _, err := git(ctx, s.Root, "cat-file", "-e", s.Commit+":"+ignPath); err != nil {
		return nil, nil
	}
	data, err := git(ctx, s.Root, "show", s.Commit+":"+ignPath)
	if err != nil {
		return nil, err
	}
	return ReadIgnore(strings.NewReader(data))
}

// parents are the directories above a slash-separated name, the top first.
func parents(name string) []string {
	var out []string
	for i := range len(name) {
		if name[i] == '/' {
			out = append(out, name[:i])
		}
	}
	return out
}
