package apiserver

import (
	"context"
	"errors"
	"net/http"

	"berth/api"
)

// ImageResolver answers which manifest a tag of berth's registry names
// (internal/registry); errors wrap api.ErrNoRepository or api.ErrNoTag
// when the registry lacks the repository or the tag.
type ImageResolver interface {
	Resolve(ctx context.Context, repo, tag string) (digest string, err error)
}

// resolveImage pins an app's image when it names berth's registry: a
// reference without a registry host whose repository the registry has.
// Any other reference is a local or external image and runs as written
// (digest ""). A repository the registry has without the tag is the
// user's mistake: 400 naming the image, nothing stored.
func (s *Server) resolveImage(w http.ResponseWriter, r *http.Request, ref string) (string, bool) {
	repo, tag, ok := api.RegistryImage(ref)
	if !ok || s.Images == nil {
		return "", true
	}
	digest, err := s.Images.Resolve(r.Context(), repo, tag)
	switch {
	case err == nil:
		return digest, true
	case errors.Is(err, api.ErrNoRepository):
		return "", true // not berth's: a local image
	case errors.Is(err, api.ErrNoTag):
		writeError(w, http.StatusBadRequest, "image", "image: berth's registry has %s but no tag %s (berth image ls %s lists its tags)", repo, tag, repo)
		return "", false
	}
	s.Log.Error("resolve image", "image", ref, "err", err)
	writeError(w, http.StatusServiceUnavailable, "image", "image: could not ask berth's registry about %s: %v", ref, err)
	return "", false
}
