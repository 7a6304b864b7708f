package api

import (
	"errors"
	"strings"
)

// ErrNoRepository and ErrNoTag: what berth's registry does not have.
var (
	ErrNoRepository = errors.New("no such repository")
	ErrNoTag        = errors.New("no such tag")
)

// RegistryImage splits an image reference that may name an image in
// berth's own registry: one without a registry host (the first path
// component has no '.' or ':' and is not "localhost", Docker's rule) and
// without a digest. The tag defaults to "latest". ok is false for any
// other reference (example.org/x:1, 127.0.0.1:5000/x, x@sha256:...).
//
// Whether it does name one is the server's to say at deploy time: a
// reference names berth's registry when the registry has its repository;
// otherwise it is a local (or pullable) image, as before the registry.
func RegistryImage(ref string) (repo, tag string, ok bool) {
	if ref == "" || strings.Contains(ref, "@") {
		return "", "", false
	}
	first, _, hasSlash := strings.Cut(ref, "/")
	if hasSlash && (strings.ContainsAny(first, ".:") || first == "localhost") {
		return "", "", false
	}
	repo, tag = ref, "latest"
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		repo, tag = ref[:i], ref[i+1:]
	}
	return repo, tag, true
}

// PinnedImage is the reference an agent pulls an image of berth's
// registry by: the repository at the digest, from host (the agent's
// loopback cache of the registry).
func PinnedImage(host, ref, digest string) string {
	repo, _, ok := RegistryImage(ref)
	if !ok || digest == "" {
		return ref
	}
	return host + "/" + repo + "@" + digest
}
