package build

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// ignore is a .dockerignore: Docker's own matcher, so that berth excludes
// what `docker build` would.
type ignore struct {
	pm *patternmatcher.PatternMatcher
}

// ReadIgnore reads the patterns of a .dockerignore.
func ReadIgnore(r io.Reader) ([]string, error) {
	patterns, err := ignorefile.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", DockerIgnore, err)
	}
	return patterns, nil
}

func readIgnoreFile(p string) (*ignore, error) {
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return &ignore{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	patterns, err := ReadIgnore(f)
	if err != nil {
		return nil, err
	}
	return newIgnore(patterns)
}

func newIgnore(patterns []string) (*ignore, error) {
	if len(patterns) == 0 {
		return &ignore{}, nil
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", DockerIgnore, err)
	}
	return &ignore{pm: pm}, nil
}

// excluded reports whether the slash-separated path is left out of the
// context. The Dockerfile and the .dockerignore never are.
func (i *ignore) excluded(name string) bool {
	if i.pm == nil || name == Dockerfile || name == DockerIgnore {
		return false
	}
	// A pattern excludes a path when it matches the path or one of its
	// parent directories (Docker's rule); it fails only on a pattern New
	// would have refused.
	m, err := i.pm.MatchesOrParentMatches(name)
	return err == nil && m
}

// hasExceptions: some pattern starts with '!', so an excluded directory
// may still hold files to send.
func (i *ignore) hasExceptions() bool { return i.pm != nil && i.pm.Exclusions() }
