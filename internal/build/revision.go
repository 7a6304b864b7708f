package build

import (
	"archive/tar"
	"bytes"
	"fmt"
	"strings"

	"berth/api"
)

// Naming says what a build is tagged with and which revision it records.
//
//   - A clean git work tree: the commit, tagged with its full id.
//   - --dirty: the working tree's files, tagged <commit>-dirty.
//   - Outside git: the directory's files, tagged ctx-<the first 12 hex
//     digits of the SHA-256 of the context tar> (WriteDir makes the same
//     tar of the same files, so the same files get the same tag).
//
// The revision (/app/REVISION and the org.opencontainers.image.revision
// label) is the tag.
func Naming(commit string, dirty bool, contextHash string) (tag, revision string) {
	switch {
	case commit != "" && dirty:
		tag = commit + "-dirty"
	case commit != "":
		tag = commit
	default:
		tag = "ctx-" + contextHash[:min(12, len(contextHash))]
	}
	return tag, tag
}

// RevisionDockerfile is the second build's Dockerfile: the user's image
// (by id) with the revision file added. The label comes with the build's
// labels (RevisionLabels), so that nothing the user wrote can change it.
func RevisionDockerfile(base string) string {
	return fmt.Sprintf("FROM %s\nCOPY REVISION %s\n", base, api.RevisionFile)
}

// RevisionLabels are the labels of the second build.
func RevisionLabels(revision string) map[string]string {
	return map[string]string{api.RevisionLabel: revision}
}

// RevisionContext is the context of the second build: its Dockerfile and
// the REVISION file, which holds the revision (no newline at its end).
func RevisionContext(base, revision string) ([]byte, error) {
	if strings.ContainsAny(base, " \n\t") || base == "" {
		return nil, fmt.Errorf("revision build: %q is not an image id", base)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct{ name, body string }{
		{Dockerfile, RevisionDockerfile(base)},
		{"REVISION", revision},
	} {
		hdr := &tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), ModTime: mtime, Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write([]byte(f.body)); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
