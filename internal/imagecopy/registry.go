package imagecopy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

type httpDoer interface {
	Do(*http.Request) (*http.Response, error)
}

// pushBlob puts one blob into the repository unless it is there already;
// it reports whether it uploaded it.
func (p *pusher) pushBlob(ctx context.Context, f *file) (bool, error) {
	resp, err := p.do(ctx, http.MethodHead, p.base+"/v2/"+p.repo+"/blobs/"+f.digest, nil, -1, "")
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return false, nil
	case http.StatusNotFound:
	default: // a HEAD's answer has no body: the status says it
		return false, &RegistryError{Step: "check for the blob", Status: resp.StatusCode, Message: http.StatusText(resp.StatusCode)}
	}
	// POST opens an upload; one monolithic PUT with the digest closes it.
	resp, err = p.do(ctx, http.MethodPost, p.base+"/v2/"+p.repo+"/blobs/uploads/", nil, 0, "")
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return false, registryError("start the upload", resp)
	}
	loc, err := location(resp)
	if err != nil {
		return false, err
	}
	resp, err = p.do(ctx, http.MethodPut, withDigest(loc, f.digest), f.stored(), f.size, "application/octet-stream")
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return false, registryError("upload", resp)
	}
	return true, nil
}

// location is where an upload goes on: the Location of the registry's
// answer, relative to the request.
func location(resp *http.Response) (*url.URL, error) {
	loc := resp.Header.Get("Location")
	if loc == "" {
		return nil, fmt.Errorf("the upload: the registry answered %d without a Location", resp.StatusCode)
	}
	u, err := resp.Request.URL.Parse(loc)
	if err != nil {
		return nil, fmt.Errorf("the upload: the registry's Location %q: %w", loc, err)
	}
	return u, nil
}

// withDigest is an upload's location with the digest that closes it.
func withDigest(u *url.URL, digest string) string {
	v := *u
	q := v.Query()
	q.Set("digest", digest)
	v.RawQuery = q.Encode()
	return v.String()
}

// putManifest stores the manifest under the tag and returns its digest.
func (p *pusher) putManifest(ctx context.Context, tag string, body []byte) (string, error) {
	resp, err := p.do(ctx, http.MethodPut, p.base+"/v2/"+p.repo+"/manifests/"+url.PathEscape(tag), bytes.NewReader(body), int64(len(body)), ManifestType)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return "", registryError("put the manifest", resp)
	}
	digest := sha256Hex(body)
	if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != digest {
		return "", fmt.Errorf("put the manifest: the registry stored %s, the manifest is %s", got, digest)
	}
	return digest, nil
}

// do sends one request with the target's token; size -1 means no body.
func (p *pusher) do(ctx context.Context, method, u string, body io.Reader, size int64, contentType string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	if size >= 0 {
		req.ContentLength = size
		if size == 0 {
			req.Body = http.NoBody
		}
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if p.t.Token != "" {
		req.Header.Set("Authorization", "Bearer "+p.t.Token)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("the registry at %s: %w", p.base, err)
	}
	return resp, nil
}

// specErrors is the distribution-spec's error body.
type specErrors struct {
	Errors []struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Detail  any    `json:"detail"`
	} `json:"errors"`
}

// RegistryError is an answer of the registry that refused a step.
type RegistryError struct {
	Step    string // what was being done: "upload", "put the manifest", ...
	Status  int
	Code    string // the distribution-spec's code (UNAUTHORIZED, DENIED, ...), if any
	Message string
}

func (e *RegistryError) Error() string {
	s := fmt.Sprintf("%s: the registry answered %d", e.Step, e.Status)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// registryError reads a refusal's body into a RegistryError.
func registryError(step string, resp *http.Response) error {
	e := &RegistryError{Step: step, Status: resp.StatusCode}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var se specErrors
	if json.Unmarshal(b, &se) == nil && len(se.Errors) > 0 {
		e.Code = se.Errors[0].Code
		var msgs []string
		for _, x := range se.Errors {
			msgs = append(msgs, x.Message)
		}
		e.Message = strings.Join(msgs, "; ")
	} else if s := strings.TrimSpace(string(b)); s != "" && len(s) < 300 {
		e.Message = s
	}
	return e
}
