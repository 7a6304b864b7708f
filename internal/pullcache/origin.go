package pullcache

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

const userAgent = "berth-pullcache"

// origin is berth's servers' registry: several base URLs for failover.
type origin struct {
	bases  []string // scheme://host[:port][/prefix], no trailing slash
	token  func() string
	client *http.Client
	last   atomic.Int32 // index of the base that answered last
}

func newOrigin(bases []string, token func() string, client *http.Client) (*origin, error) {
	o := &origin{token: token, client: client}
	for _, b := range bases {
		b = strings.TrimSpace(b)
		if b == "" {
			continue
		}
		if !strings.Contains(b, "://") {
			b = "http://" + b
		}
		u, err := url.Parse(b)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("pull cache origin %q: want http(s)://host[:port]", b)
		}
		o.bases = append(o.bases, strings.TrimRight(b, "/"))
	}
	if len(o.bases) == 0 {
		return nil, fmt.Errorf("pull cache: no origin (the servers' registry URLs)")
	}
	if o.token == nil {
		o.token = func() string { return "" }
	}
	if o.client == nil {
		o.client = defaultClient()
	}
	return o, nil
}

// defaultClient bounds connecting and waiting for headers; a body may
// take as long as it needs (the stall timeout watches it).
func defaultClient() *http.Client {
	tr := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true, // blobs must arrive as their digest says
	}
	return &http.Client{Transport: tr}
}

// do sends a request to the servers in turn, starting with the one that
// answered last, until one answers with a status below 500. It returns
// that answer and the base that gave it, or a 503 regError saying what
// each server did.
func (o *origin) do(ctx context.Context, method, path string, hdr http.Header) (*http.Response, string, error) {
	start := int(o.last.Load())
	var fails []string
	for i := range o.bases {
		idx := (start + i) % len(o.bases)
		base := o.bases[idx]
		req, err := http.NewRequestWithContext(ctx, method, base+path, nil)
		if err != nil {
			return nil, base, fmt.Errorf("request to %s: %w", base, err)
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		req.Header.Set("User-Agent", userAgent)
		req.Header.Set("Accept-Encoding", "identity")
		if tok := o.token(); tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := o.client.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return nil, base, ctx.Err()
			}
			fails = append(fails, fmt.Sprintf("%s: %v", base, err))
			continue
		}
		if resp.StatusCode >= 500 {
			fails = append(fails, fmt.Sprintf("%s: %s", base, resp.Status))
			drain(resp)
			continue
		}
		o.last.Store(int32(idx))
		return resp, base, nil
	}
	return nil, "", &regError{
		Status:      http.StatusServiceUnavailable,
		Code:        "UNAVAILABLE",
		Message:     "no berth server's registry answers (" + strings.Join(fails, "; ") + ")",
		unreachable: true,
	}
}

// drain reads a little of an unwanted body so the connection can be
// reused, and closes it.
func drain(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	resp.Body.Close()
}

// originError turns an origin's 4xx answer into the error the client
// gets: the same status, the origin's code and message, and for 401/403
// a message saying it is the agent's token the server refused.
func originError(resp *http.Response, base, what, notFoundCode string) *regError {
	defer drain(resp)
	code, msg := "", ""
	var body struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body); err == nil && len(body.Errors) > 0 {
		code, msg = body.Errors[0].Code, body.Errors[0].Message
	}
	if msg == "" {
		msg = resp.Status
	}
	e := &regError{Status: resp.StatusCode, Code: code, Message: fmt.Sprintf("%s: the berth registry at %s answered %s", what, base, msg)}
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		e.Code = "UNAUTHORIZED"
		e.Message = fmt.Sprintf("%s: the berth registry at %s refused the agent's token (401: %s); check the agent's token (berth token ls)", what, base, msg)
	case http.StatusForbidden:
		e.Code = "DENIED"
		e.Message = fmt.Sprintf("%s: the berth registry at %s does not let the agent's token pull it (403: %s)", what, base, msg)
	case http.StatusNotFound:
		if e.Code == "" {
			e.Code = notFoundCode
		}
	case http.StatusTooManyRequests:
		e.Code = "TOOMANYREQUESTS"
	}
	if e.Code == "" {
		e.Code = "UNKNOWN"
	}
	return e
}
