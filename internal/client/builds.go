package client

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	json "github.com/goccy/go-json"

	"berth/api"
)

// BuildRequest says what POST /v1/builds builds; its context is the body.
type BuildRequest struct {
	App      string
	Commit   string // full git commit id; "" outside git
	Dirty    bool
	Tag      string // "" lets the server name it (the commit, or ctx-<hash>)
	Revision string // "" : the tag
	Deploy   bool
	Memory   api.Bytes     // 0: the server's default
	CPU      api.MilliCPU  // 0: the server's default
	Timeout  time.Duration // 0: the default
}

func (b BuildRequest) query() url.Values {
	q := url.Values{"app": {b.App}}
	for k, v := range map[string]string{"commit": b.Commit, "tag": b.Tag, "revision": b.Revision} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if b.Dirty {
		q.Set("dirty", "true")
	}
	if b.Deploy {
		q.Set("deploy", "true")
	}
	if b.Memory > 0 {
		q.Set("memory", strconv.FormatInt(int64(b.Memory), 10))
	}
	if b.CPU > 0 {
		q.Set("cpu", b.CPU.String())
	}
	if b.Timeout > 0 {
		q.Set("timeout", api.Duration(b.Timeout).String())
	}
	return q
}

// SubmitBuild sends a build's context (a tar of size bytes) and returns
// the queued build. The context goes to one server: the next one only
// when no server took the connection.
func (c *Client) SubmitBuild(ctx context.Context, b BuildRequest, tarball io.ReadSeeker, size int64) (api.Build, error) {
	var out api.Build
	path := "/v1/builds?" + b.query().Encode()
	var lastErr error
	first := int(c.current.Load())
	for i := range c.servers {
		n := (first + i) % len(c.servers)
		if _, err := tarball.Seek(0, io.SeekStart); err != nil {
			return out, err
		}
		resp, err := c.stream(ctx, n, "POST", path, io.NopCloser(tarball), size, "application/x-tar")
		if err != nil {
			lastErr = err
			if unreached(err) && ctx.Err() == nil {
				continue
			}
			return out, err
		}
		c.current.Store(int32(n))
		return out, decodeAnswer(resp, "POST", path, &out)
	}
	return out, lastErr
}

// stream sends one request whose body is streamed with its length known
// (size < 0: unknown, sent chunked) to server n.
func (c *Client) stream(ctx context.Context, n int, method, path string, body io.ReadCloser, size int64, contentType string) (*http.Response, error) {
	base := c.servers[n]
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return nil, err
	}
	if size >= 0 {
		req.ContentLength = size
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", contentType)
	resp, err := c.http.Do(req)
	if err != nil {
		if unreached(err) {
			return nil, fmt.Errorf("no berth server at %s answers: %w", base, dialCause(err))
		}
		return nil, fmt.Errorf("berth server at %s: %w", base, err)
	}
	return resp, nil
}

func decodeAnswer(resp *http.Response, method, path string, out any) error {
	resp, err := answer(method, path, resp)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// ListBuilds lists builds, newest first: all, or an app's (limit 0: the
// server's default of 100; -1: all).
func (c *Client) ListBuilds(ctx context.Context, app string, limit int) (api.List[api.Build], error) {
	q := url.Values{}
	if app != "" {
		q.Set("app", app)
	}
	if limit != 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var l api.List[api.Build]
	return l, c.do(ctx, "GET", "/v1/builds?"+q.Encode(), nil, &l)
}

func (c *Client) GetBuild(ctx context.Context, id string) (api.Build, error) {
	var b api.Build
	return b, c.do(ctx, "GET", "/v1/builds/"+url.PathEscape(id), nil, &b)
}

// BuildLogs streams the log of a build's latest attempt; with follow,
// until the attempt has ended and its log is complete.
func (c *Client) BuildLogs(ctx context.Context, id string, follow bool) (io.ReadCloser, error) {
	q := url.Values{}
	if follow {
		q.Set("follow", "true")
	}
	resp, err := c.request(ctx, "GET", "/v1/builds/"+url.PathEscape(id)+"/logs?"+q.Encode(), nil, "")
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// BuildContext (agent) streams the context of a build attempt on the
// agent's node.
func (c *Client) BuildContext(ctx context.Context, id string, attempt int) (io.ReadCloser, error) {
	resp, err := c.request(ctx, "GET", fmt.Sprintf("/v1/builds/%s/context?attempt=%d", url.PathEscape(id), attempt), nil, "")
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// PutBuildImage (agent) uploads the image a build attempt made, as
// `docker save` writes it; the server pushes it into its registry (and
// deploys it, when the build says so) before it answers.
func (c *Client) PutBuildImage(ctx context.Context, id string, attempt int, save io.ReadCloser) (api.BuildImageResult, error) {
	var out api.BuildImageResult
	path := fmt.Sprintf("/v1/builds/%s/image?attempt=%d", url.PathEscape(id), attempt)
	resp, err := c.stream(ctx, int(c.current.Load()), "PUT", path, save, -1, "application/x-tar")
	if err != nil {
		return out, err
	}
	return out, decodeAnswer(resp, "PUT", path, &out)
}
