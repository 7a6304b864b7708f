package client

import (
	"context"
	"net/url"

	"berth/internal/imagecopy"
)

// Image is one tag of berth's registry (or a manifest without a tag that
// an app or instance still uses), as GET /v1/images lists it.
type Image struct {
	Repository string `json:"repository"`
	Tag        string `json:"tag,omitempty"` // "": no tag names it any more
	Digest     string `json:"digest"`
	Size       int64  `json:"size"` // manifest, config and layers
	// Revisions are the apps whose current revision runs this image.
	Revisions []ImageRevision `json:"revisions"`
	// Instances are the instances that run it (the current revision's and
	// older ones still in a rolling update).
	Instances []ImageInstance `json:"instances"`
}

// ImageRevision is an app revision pinned to an image's digest.
type ImageRevision struct {
	App      string `json:"app"`
	Revision int64  `json:"revision"` // the app's template revision
}

// ImageInstance is an instance pinned to an image's digest.
type ImageInstance struct {
	Name string `json:"name"`
	App  string `json:"app"`
	Node string `json:"node,omitempty"`
}

// ImageList is the answer of GET /v1/images.
type ImageList struct {
	Items []Image `json:"items"`
}

// ListImages lists berth's registry: every tag of repo, or of every
// repository when repo is "".
func (c *Client) ListImages(ctx context.Context, repo string) (ImageList, error) {
	path := "/v1/images"
	if repo != "" {
		path += "?repo=" + url.QueryEscape(repo)
	}
	var l ImageList
	return l, c.do(ctx, "GET", path, nil, &l)
}

// Registry is where images are pushed into berth's registry: the /v2/ of
// the server that answered last, with the client's token.
func (c *Client) Registry() imagecopy.Target {
	return imagecopy.Target{Base: c.Addr(), Token: c.token, Client: c.http}
}
