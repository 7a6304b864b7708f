package build

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"berth/internal/testenv"
)

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// entries lists a tar's names (directories end in /) and file bodies.
func entries(t *testing.T, data []byte) ([]string, map[string]string) {
	t.Helper()
	var names []string
	bodies := map[string]string{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names, bodies
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		if hdr.Uid != 0 || hdr.Gid != 0 || !hdr.ModTime.Equal(mtime) {
			t.Errorf("%s: header not normalized: uid %d gid %d mtime %s", hdr.Name, hdr.Uid, hdr.Gid, hdr.ModTime)
		}
		b, _ := io.ReadAll(tr)
		bodies[hdr.Name] = string(b)
	}
}

func TestWriteDirHonoursDockerignore(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"Dockerfile":       "FROM scratch\n",
		".dockerignore":    "# comment\nDockerfile\n.dockerignore\n*.log\nnode_modules\nsecret/\n!secret/keep.txt\n",
		"main.go":          "package main\n",
		"debug.log":        "x",
		"sub/trace.log":    "not excluded: *.log is for the root only",
		"node_modules/a/b": "dep",
		"secret/key":       "k",
		"secret/keep.txt":  "kept by the exception",
	})
	var buf bytes.Buffer
	info, err := WriteDir(&buf, dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	names, bodies := entries(t, buf.Bytes())
	want := []string{".dockerignore", "Dockerfile", "main.go", "secret/keep.txt", "sub/", "sub/trace.log"}
	if !slices.Equal(names, want) {
		t.Fatalf("entries %q; want %q", names, want)
	}
	if bodies["secret/keep.txt"] != "kept by the exception" || info.Files != 5 || info.Size != int64(buf.Len()) {
		t.Fatalf("bodies %q, info %+v (tar of %d bytes)", bodies, info, buf.Len())
	}
}

// The same files make the same tar, whatever their times: the tag of a
// directory outside git is a content hash.
func TestWriteDirIsAContentHash(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	files := map[string]string{"Dockerfile": "FROM scratch\nCOPY x /x\n", "x": "1", "d/y": "2"}
	writeFiles(t, a, files)
	writeFiles(t, b, files)
	old := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(filepath.Join(b, "x"), old, old); err != nil {
		t.Fatal(err)
	}
	ia, err := WriteDir(io.Discard, a, 0)
	if err != nil {
		t.Fatal(err)
	}
	ib, err := WriteDir(io.Discard, b, 0)
	if err != nil {
		t.Fatal(err)
	}
	if ia.Hash != ib.Hash || len(ia.Hash) != 64 {
		t.Fatalf("same files, hashes %s and %s", ia.Hash, ib.Hash)
	}
	writeFiles(t, b, map[string]string{"x": "changed"})
	if ic, _ := WriteDir(io.Discard, b, 0); ic.Hash == ia.Hash {
		t.Fatal("a changed file left the hash as it was")
	}
}

func TestWriteDirRefusals(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"main.go": "package main\n"})
	if _, err := WriteDir(io.Discard, dir, 0); !errors.Is(err, ErrNoDockerfile) {
		t.Fatalf("no Dockerfile: %v", err)
	}
	writeFiles(t, dir, map[string]string{"Dockerfile": "FROM scratch\n", "big": strings.Repeat("x", 64<<10)})
	_, err := WriteDir(io.Discard, dir, 32<<10)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "32 KiB") {
		t.Fatalf("over the limit: %v", err)
	}
}

func TestFilterTarTakesTheSubdirectory(t *testing.T) {
	var in bytes.Buffer
	tw := tar.NewWriter(&in)
	_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header", PAXRecords: map[string]string{"comment": "abc"}})
	for _, f := range []struct{ name, body string }{
		{"README", "top"}, {"app/", ""}, {"app/Dockerfile", "FROM scratch\n"}, {"app/skip.tmp", "t"},
		{"app/src/main.go", "package main"}, {"apple/Dockerfile", "another directory"},
	} {
		hdr := &tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), Typeflag: tar.TypeReg}
		if strings.HasSuffix(f.name, "/") {
			hdr.Typeflag, hdr.Mode = tar.TypeDir, 0o755
		}
		_ = tw.WriteHeader(hdr)
		_, _ = tw.Write([]byte(f.body))
	}
	_ = tw.Close()
	var out bytes.Buffer
	if _, err := FilterTar(&out, &in, "app/", []string{"*.tmp"}, 0); err != nil {
		t.Fatal(err)
	}
	names, _ := entries(t, out.Bytes())
	if want := []string{"Dockerfile", "src/main.go"}; !slices.Equal(names, want) {
		t.Fatalf("entries %q; want %q", names, want)
	}
	ok, err := HasDockerfile(bytes.NewReader(out.Bytes()))
	if err != nil || !ok {
		t.Fatalf("HasDockerfile: %v %v", ok, err)
	}
	if _, err := HasDockerfile(strings.NewReader("not a tar, but long enough to be read as a header block..." + strings.Repeat(" ", 600))); err == nil {
		t.Fatal("HasDockerfile took garbage for a tar")
	}
}

func TestNamingAndRevisionAddition(t *testing.T) {
	sha := strings.Repeat("ab", 20)
	for _, c := range []struct {
		commit string
		dirty  bool
		want   string
	}{{sha, false, sha}, {sha, true, sha + "-dirty"}, {"", false, "ctx-0123456789ab"}} {
		if tag, rev := Naming(c.commit, c.dirty, "0123456789abcdef"); tag != c.want || rev != c.want {
			t.Errorf("Naming(%q, %v): %q %q; want %q", c.commit, c.dirty, tag, rev, c.want)
		}
	}
	add := RevisionAddition(sha)
	if add.Files["/app/REVISION"] != sha || add.Labels["org.opencontainers.image.revision"] != sha {
		t.Fatalf("revision addition: %+v", add)
	}
}

func needGit(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		testenv.Missing(t, "git is not installed (the set-up installs it: scripts/docker-up.sh)")
	}
}

func gitRun(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=t", "-c", "user.email=t@example.org"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v: %s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// A git work tree builds HEAD's tree of the directory: untracked and
// uncommitted files are not in it, and the changes are reported.
func TestGitSource(t *testing.T) {
	needGit(t)
	ctx := context.Background()
	root := t.TempDir()
	gitRun(t, root, "init", "-q")
	if _, err := Inspect(ctx, root); err == nil || !strings.Contains(err.Error(), "no commit yet") {
		t.Fatalf("a work tree without a commit: %v", err)
	}
	writeFiles(t, root, map[string]string{
		"README": "top", "svc/Dockerfile": "FROM scratch\nCOPY . /\n", "svc/.dockerignore": "*.md\n",
		"svc/a.txt": "committed", "svc/notes.md": "ignored by .dockerignore",
	})
	gitRun(t, root, "add", ".")
	gitRun(t, root, "commit", "-q", "-m", "one")
	head := gitRun(t, root, "rev-parse", "HEAD")
	writeFiles(t, root, map[string]string{"svc/a.txt": "changed, not committed", "svc/new.txt": "untracked", "README": "changed elsewhere"})

	s, err := Inspect(ctx, filepath.Join(root, "svc"))
	if err != nil {
		t.Fatal(err)
	}
	if !s.Git() || s.Commit != head || s.Prefix != "svc/" || len(s.Changes) != 2 {
		t.Fatalf("source %+v; want commit %s, prefix svc/, the two changes in svc", s, head)
	}
	var buf bytes.Buffer
	if _, err := s.WriteCommit(ctx, &buf, 0); err != nil {
		t.Fatal(err)
	}
	names, bodies := entries(t, buf.Bytes())
	if want := []string{".dockerignore", "Dockerfile", "a.txt"}; !slices.Equal(names, want) || bodies["a.txt"] != "committed" {
		t.Fatalf("entries %q (a.txt %q); want %q with a.txt as committed", names, bodies["a.txt"], want)
	}

	plain, err := Inspect(ctx, t.TempDir())
	if err != nil || plain.Git() {
		t.Fatalf("a directory outside git: %+v %v", plain, err)
	}
}

// WriteClean writes what WriteCommit writes, byte for byte, from the disk
// of a clean work tree; with attributes that git archive would apply, it
// is WriteCommit.
func TestWriteCleanIsWriteCommit(t *testing.T) {
	needGit(t)
	ctx := context.Background()
	root := t.TempDir()
	gitRun(t, root, "init", "-q")
	writeFiles(t, root, map[string]string{
		"README": "top", "svc/Dockerfile": "FROM scratch\nCOPY . /\n", "svc/.dockerignore": "*.md\nlogs\n",
		"svc/a.txt": "a", "svc/a-b": "dash", "svc/a/x": "in a", "svc/a/deep/y.bin": strings.Repeat("y", 70000),
		"svc/notes.md": "ignored", "svc/logs/1": "ignored dir", "svc/run.sh": "#!/bin/sh\n", "other/z": "outside",
	})
	if err := os.Chmod(filepath.Join(root, "svc/run.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("a/x", filepath.Join(root, "svc/link")); err != nil {
		t.Fatal(err)
	}
	gitRun(t, root, "add", ".")
	gitRun(t, root, "commit", "-q", "-m", "one")

	for _, dir := range []string{root + "/svc", root} {
		if dir == root {
			writeFiles(t, root, map[string]string{"Dockerfile": "FROM scratch\n"})
			gitRun(t, root, "add", ".")
			gitRun(t, root, "commit", "-q", "-m", "a Dockerfile at the top")
		}
		s, err := Inspect(ctx, dir)
		if err != nil || len(s.Changes) > 0 {
			t.Fatalf("%s: %+v %v", dir, s, err)
		}
		var archived, read bytes.Buffer
		ai, err := s.WriteCommit(ctx, &archived, 0)
		if err != nil {
			t.Fatal(err)
		}
		ri, err := s.WriteClean(ctx, &read, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(archived.Bytes(), read.Bytes()) || ai != ri {
			an, _ := entries(t, archived.Bytes())
			rn, _ := entries(t, read.Bytes())
			t.Fatalf("%s: WriteClean differs from WriteCommit:\narchive %q %+v\ndisk    %q %+v", dir, an, ai, rn, ri)
		}
		if dir == root+"/svc" {
			names, _ := entries(t, read.Bytes())
			if want := []string{".dockerignore", "Dockerfile", "a-b", "a.txt", "a/", "a/deep/", "a/deep/y.bin", "a/x", "link", "run.sh"}; !slices.Equal(names, want) {
				t.Fatalf("entries %q, want %q", names, want)
			}
		}
	}

	// export-ignore is git archive's: the disk is not read then.
	writeFiles(t, root, map[string]string{".gitattributes": "README export-ignore\n"})
	gitRun(t, root, "add", ".")
	gitRun(t, root, "commit", "-q", "-m", "attributes")
	s, err := Inspect(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := s.WriteClean(ctx, &buf, 0); err != nil {
		t.Fatal(err)
	}
	if _, bodies := entries(t, buf.Bytes()); bodies["svc/a.txt"] != "a" || slices.Contains(slices.Collect(maps.Keys(bodies)), "README") {
		t.Fatalf("with export-ignore: %q", slices.Collect(maps.Keys(bodies)))
	}
}

// The repository's info/attributes is git archive's too, also for a
// linked work tree (it is in the repository, not in the tree's .git file).
func TestWriteCleanHonoursInfoAttributesOfALinkedTree(t *testing.T) {
	needGit(t)
	ctx := context.Background()
	root := t.TempDir()
	gitRun(t, root, "init", "-q")
	writeFiles(t, root, map[string]string{"Dockerfile": "FROM scratch\n", "README": "left out by export-ignore"})
	gitRun(t, root, "add", ".")
	gitRun(t, root, "commit", "-q", "-m", "one")
	linked := filepath.Join(t.TempDir(), "linked")
	gitRun(t, root, "worktree", "add", "-q", linked)
	writeFiles(t, root, map[string]string{".git/info/attributes": "README export-ignore\n"})

	s, err := Inspect(ctx, linked)
	if err != nil || len(s.Changes) > 0 {
		t.Fatalf("%+v %v", s, err)
	}
	var buf bytes.Buffer
	if _, err := s.WriteClean(ctx, &buf, 0); err != nil {
		t.Fatal(err)
	}
	if names, _ := entries(t, buf.Bytes()); !slices.Equal(names, []string{"Dockerfile"}) {
		t.Fatalf("entries %q, want only the Dockerfile (README is export-ignore in info/attributes)", names)
	}
}
