package build

import (
	"berth/api"
	"berth/internal/imagecopy"
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

// RevisionAddition is what the server adds on top of a built image as it
// pushes it: /app/REVISION holding the revision (no newline at its end)
// and the org.opencontainers.image.revision label, so that the user's
// Dockerfile need not cooperate and nothing in it can change them.
func RevisionAddition(revision string) *imagecopy.Addition {
	return &imagecopy.Addition{
		Files:     map[string]string{api.RevisionFile: revision},
		Labels:    map[string]string{api.RevisionLabel: revision},
		CreatedBy: "berth build: revision " + revision,
	}
}
