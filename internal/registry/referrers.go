package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/distribution/distribution/v3/registry/storage"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// Distribution v3.1 has no referrers API (GET /v2/<name>/referrers/<digest>,
// distribution-spec 1.1), which is content discovery, so berth serves it:
// the repository's manifests are listed from the same storage and those
// whose subject is the digest are the referrers. That reads every manifest
// of the repository per call, which is fine for the size of berth's
// repositories and always right (no index to keep in step with deletes
// and garbage collection). A manifest pushed with a subject gets the
// OCI-Subject response header the spec asks for.

// maxManifestBytes is Distribution's own limit on a manifest body.
const maxManifestBytes = 4 << 20

const mediaTypeIndex = "application/vnd.oci.image.index.v1+json"

// referrers reads the registry's storage on its own, read only.
type referrers struct {
	ns distribution.Namespace
}

func newReferrers(ctx context.Context, dir string) (*referrers, error) {
	drv := filesystem.New(filesystem.DriverParameters{RootDirectory: dir, MaxThreads: 100})
	ns, err := storage.NewRegistry(ctx, drv)
	if err != nil {
		return nil, err
	}
	return &referrers{ns: ns}, nil
}

// referrersPath splits /v2/<name>/referrers/<digest>; ok is false for any
// other path.
func referrersPath(path string) (name, dgst string, ok bool) {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return "", "", false
	}
	i := strings.LastIndex(rest, "/referrers/")
	if i <= 0 || strings.Contains(rest[i+len("/referrers/"):], "/") {
		return "", "", false // e.g. /v2/a/referrers/b/manifests/1: repository a/referrers/b
	}
	return rest[:i], rest[i+len("/referrers/"):], true
}

// manifestFields are the parts of a manifest or index a referrer
// descriptor is made of.
type manifestFields struct {
	ArtifactType string `json:"artifactType"`
	Config       *struct {
		MediaType string `json:"mediaType"`
	} `json:"config"`
	Subject *struct {
		Digest digest.Digest `json:"digest"`
	} `json:"subject"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type descriptor struct {
	MediaType    string            `json:"mediaType"`
	Digest       digest.Digest     `json:"digest"`
	Size         int               `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

// serve answers GET or HEAD /v2/<name>/referrers/<digest>[?artifactType=].
func (rf *referrers) serve(w http.ResponseWriter, r *http.Request, name, dgst string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		serveError(w, errcode.ErrorCodeUnsupported.WithMessage(r.Method+" is not a method of the referrers API (GET, HEAD)"))
		return
	}
	named, err := reference.WithName(name)
	if err != nil {
		serveError(w, errcode.ErrorCodeNameInvalid.WithDetail(err))
		return
	}
	subject, err := digest.Parse(dgst)
	if err != nil {
		serveError(w, errcode.ErrorCodeDigestInvalid.WithDetail(err))
		return
	}
	artifactType := r.URL.Query().Get("artifactType")
	list, err := rf.list(r.Context(), named, subject, artifactType)
	if err != nil {
		serveError(w, errcode.ErrorCodeUnknown.WithDetail(err))
		return
	}
	body, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mediaTypeIndex, "manifests": list})
	if artifactType != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	w.Header().Set("Content-Type", mediaTypeIndex)
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(body)
	}
}

// list is the descriptors of the manifests of repository named whose
// subject is subject, by digest; a repository that does not exist has none.
func (rf *referrers) list(ctx context.Context, named reference.Named, subject digest.Digest, artifactType string) ([]descriptor, error) {
	repo, err := rf.ns.Repository(ctx, named)
	if err != nil {
		return nil, err
	}
	ms, err := repo.Manifests(ctx)
	if err != nil {
		return nil, err
	}
	enum, ok := ms.(distribution.ManifestEnumerator)
	if !ok {
		return nil, errors.New("the registry's manifest store cannot list manifests")
	}
	list := []descriptor{}
	err = enum.Enumerate(ctx, func(d digest.Digest) error {
		m, err := ms.Get(ctx, d)
		if err != nil {
			return nil // not a manifest this registry reads: no referrer
		}
		mediaType, payload, err := m.Payload()
		if err != nil {
			return nil
		}
		var f manifestFields
		if json.Unmarshal(payload, &f) != nil || f.Subject == nil || f.Subject.Digest != subject {
			return nil
		}
		at := f.ArtifactType
		if at == "" && f.Config != nil {
			at = f.Config.MediaType
		}
		if artifactType == "" || at == artifactType {
			list = append(list, descriptor{MediaType: mediaType, Digest: d, Size: len(payload), ArtifactType: at, Annotations: f.Annotations})
		}
		return nil
	})
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		err = nil // no such repository, or no manifest in it yet
	}
	slices.SortFunc(list, func(a, b descriptor) int { return strings.Compare(string(a.Digest), string(b.Digest)) })
	return list, err
}

// withSubjectHeader prepares a manifest PUT: when the manifest has a
// subject, a 201 answer carries it as OCI-Subject. It reads the body
// (within Distribution's limit) and puts it back for the registry.
func withSubjectHeader(w http.ResponseWriter, r *http.Request) http.ResponseWriter {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxManifestBytes+1))
	r.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(body), r.Body), r.Body}
	var f manifestFields
	if err != nil || len(body) > maxManifestBytes || json.Unmarshal(body, &f) != nil || f.Subject == nil {
		return w
	}
	return &subjectWriter{ResponseWriter: w, subject: f.Subject.Digest.String()}
}

type subjectWriter struct {
	http.ResponseWriter
	subject string
}

func (w *subjectWriter) WriteHeader(code int) {
	if code == http.StatusCreated {
		w.Header().Set("OCI-Subject", w.subject)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *subjectWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// isManifestPut reports whether r pushes a manifest.
func isManifestPut(r *http.Request) bool {
	return r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/v2/") && strings.Contains(r.URL.Path, "/manifests/")
}
