// Package client is the Go client of berth's API, used by the CLI, the
// agent and (later) the gateway.
package client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	json "github.com/goccy/go-json"

	"berth/api"
)

// Client talks to a berth server, or to the first that answers of several.
type Client struct {
	servers []string // base URLs
	current atomic.Int32
	token   string
	http    *http.Client
}

// New returns a client of the server at addr (http://host:port or
// host:port), or of several servers given as a comma-separated list: a
// request goes to the server that answered last and, when that one does
// not answer, to the next.
func New(addr, token string) *Client {
	var servers []string
	for _, a := range strings.Split(addr, ",") {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		if !strings.Contains(a, "://") {
			a = "http://" + a
		}
		servers = append(servers, strings.TrimRight(a, "/"))
	}
	if len(servers) == 0 {
		servers = []string{"http://"}
	}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     90 * time.Second,
	}
	return &Client{servers: servers, token: token, http: &http.Client{Transport: tr}}
}

// Addr is the base URL of the server that answered last.
func (c *Client) Addr() string { return c.servers[c.current.Load()] }

// Servers are the base URLs of all servers the client may use.
func (c *Client) Servers() []string { return slices.Clone(c.servers) }

// Error is an error answer of the API.
type Error struct {
	Status  int
	Message string
	Field   string
}

func (e *Error) Error() string { return e.Message }

// IsStatus reports whether err is an API answer with the given HTTP status.
func IsStatus(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == status
}

func (c *Client) request(ctx context.Context, method, path string, body io.Reader, contentType string) (*http.Response, error) {
	if len(c.servers) == 1 {
		resp, err := c.send(ctx, 0, method, path, body, contentType)
		if err != nil {
			return nil, err
		}
		return answer(method, path, resp)
	}
	// The body may be sent more than once.
	var data []byte
	if body != nil {
		var err error
		if data, err = io.ReadAll(body); err != nil {
			return nil, err
		}
	}
	first := int(c.current.Load())
	var lastErr error
	none := 0 // servers that took no connection
	for i := range c.servers {
		n := (first + i) % len(c.servers)
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(data)
		}
		resp, err := c.send(ctx, n, method, path, rd, contentType)
		if err == nil && !(resp.StatusCode == http.StatusServiceUnavailable && idempotent(method)) {
			c.current.Store(int32(n))
			return answer(method, path, resp)
		}
		if err == nil { // 503: this server's store does not answer
			lastErr = answerErr(method, path, resp)
			continue
		}
		lastErr = err
		if unreached(err) {
			none++
		}
		if ctx.Err() != nil || !(unreached(err) || idempotent(method)) {
			break
		}
	}
	if none == len(c.servers) {
		return nil, fmt.Errorf("no berth server at %s answers: %w", strings.Join(c.servers, ", "), dialCause(lastErr))
	}
	return nil, lastErr
}

// send sends one request to server n.
func (c *Client) send(ctx context.Context, n int, method, path string, body io.Reader, contentType string) (*http.Response, error) {
	base := c.servers[n]
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if unreached(err) {
			return nil, fmt.Errorf("no berth server at %s answers: %w", base, dialCause(err))
		}
		return nil, fmt.Errorf("berth server at %s: %w", base, err)
	}
	return resp, nil
}

// dialCause is the useful end of a dial error ("connection refused"),
// without the URL and address the message names already.
func dialCause(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return &net.OpError{Op: op.Op, Net: op.Net, Err: op.Err} // "dial tcp: connect: connection refused"
	}
	return err
}

// Unreached reports whether a request failed because no server took the
// connection: nothing listens at the address (or none of them).
func Unreached(err error) bool { return unreached(err) }

// answer turns an error status into an *Error.
func answer(method, path string, resp *http.Response) (*http.Response, error) {
	if resp.StatusCode >= 300 {
		return nil, answerErr(method, path, resp)
	}
	return resp, nil
}

func answerErr(method, path string, resp *http.Response) error {
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64*1024))
	var e api.Error
	if json.Unmarshal(b, &e) != nil || e.Error == "" {
		e.Error = fmt.Sprintf("%s %s: %s", method, path, resp.Status)
	}
	return &Error{Status: resp.StatusCode, Message: e.Error, Field: e.Field}
}

// unreached reports whether a request failed before reaching the server
// (no connection), so that sending it elsewhere cannot apply it twice.
func unreached(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// idempotent methods may be sent again to another server whatever
// happened to the first attempt.
func idempotent(method string) bool {
	switch method {
	case "GET", "HEAD", "PUT", "DELETE":
		return true
	}
	return false
}

// do sends a JSON request (body may be nil) and decodes a JSON answer into out (may be nil).
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	ct := ""
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd, ct = bytes.NewReader(b), "application/json"
	}
	resp, err := c.request(ctx, method, path, rd, ct)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

func (c *Client) Status(ctx context.Context) (api.ServerStatus, error) {
	var st api.ServerStatus
	return st, c.do(ctx, "GET", "/v1/status", nil, &st)
}

func (c *Client) ListApps(ctx context.Context) (api.List[api.App], error) {
	var l api.List[api.App]
	return l, c.do(ctx, "GET", "/v1/apps", nil, &l)
}

func (c *Client) GetApp(ctx context.Context, name string) (api.App, error) {
	var a api.App
	return a, c.do(ctx, "GET", "/v1/apps/"+url.PathEscape(name), nil, &a)
}

// DeployYAML sends an app spec as YAML (or JSON); the server validates it.
// With force, a spec of a revision reverted as bad is rolled out anyway.
func (c *Client) DeployYAML(ctx context.Context, name string, spec []byte, o DeployOptions) (api.App, error) {
	var a api.App
	q := url.Values{}
	if o.Force {
		q.Set("force", "true")
	}
	if o.Canary != "" {
		q.Set("canary", o.Canary)
	}
	path := "/v1/apps/" + url.PathEscape(name)
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	resp, err := c.request(ctx, "PUT", path, bytes.NewReader(spec), "application/yaml")
	if err != nil {
		return a, err
	}
	defer resp.Body.Close()
	return a, json.NewDecoder(resp.Body).Decode(&a)
}

// GetRevision reads one revision of an app's history.
func (c *Client) GetRevision(ctx context.Context, name string, rev int64) (api.Revision, error) {
	var r api.Revision
	return r, c.do(ctx, "GET", fmt.Sprintf("/v1/apps/%s/revisions/%d", url.PathEscape(name), rev), nil, &r)
}

// ListRevisions reads an app's kept history, newest first.
func (c *Client) ListRevisions(ctx context.Context, name string) (api.List[api.Revision], error) {
	var l api.List[api.Revision]
	return l, c.do(ctx, "GET", "/v1/apps/"+url.PathEscape(name)+"/revisions", nil, &l)
}

// Rollback gives the app a new revision copied from rev (0: the last good one).
func (c *Client) Rollback(ctx context.Context, name string, rev int64) (api.App, error) {
	var a api.App
	return a, c.do(ctx, "POST", "/v1/apps/"+url.PathEscape(name)+"/rollback", api.RollbackRequest{Revision: rev}, &a)
}

func (c *Client) Deploy(ctx context.Context, spec api.AppSpec) (api.App, error) {
	var a api.App
	return a, c.do(ctx, "PUT", "/v1/apps/"+url.PathEscape(spec.Name), spec, &a)
}

func (c *Client) DeleteApp(ctx context.Context, name string) (api.App, error) {
	var a api.App
	return a, c.do(ctx, "DELETE", "/v1/apps/"+url.PathEscape(name), nil, &a)
}

func (c *Client) Scale(ctx context.Context, name string, replicas int) (api.App, error) {
	var a api.App
	return a, c.do(ctx, "POST", "/v1/apps/"+url.PathEscape(name)+"/scale", api.ScaleRequest{Replicas: replicas}, &a)
}

// AppLogs streams the output of the app's instances, one "instance | line" per line.
func (c *Client) AppLogs(ctx context.Context, name string, follow bool, tail int) (io.ReadCloser, error) {
	q := url.Values{}
	if follow {
		q.Set("follow", "true")
	}
	if tail >= 0 {
		q.Set("tail", fmt.Sprint(tail))
	}
	resp, err := c.request(ctx, "GET", "/v1/apps/"+url.PathEscape(name)+"/logs?"+q.Encode(), nil, "")
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// InstanceFilter selects instances by app and/or node ("" = any).
type InstanceFilter struct{ App, Node string }

func (f InstanceFilter) query() url.Values {
	q := url.Values{}
	if f.App != "" {
		q.Set("app", f.App)
	}
	if f.Node != "" {
		q.Set("node", f.Node)
	}
	return q
}

func (c *Client) ListInstances(ctx context.Context, f InstanceFilter) (api.List[api.Instance], error) {
	var l api.List[api.Instance]
	return l, c.do(ctx, "GET", "/v1/instances?"+f.query().Encode(), nil, &l)
}

func (c *Client) WatchInstances(ctx context.Context, f InstanceFilter, rev int64) (<-chan api.WatchEvent[api.Instance], <-chan error) {
	q := f.query()
	return watch[api.Instance](ctx, c, "/v1/instances", q, rev)
}

func (c *Client) ReportStatus(ctx context.Context, instance string, st api.Status) error {
	return c.do(ctx, "PUT", "/v1/instances/"+url.PathEscape(instance)+"/status", st, nil)
}

// DeleteInstance tells the server a retired instance's container is gone.
func (c *Client) DeleteInstance(ctx context.Context, instance string) error {
	return c.do(ctx, "DELETE", "/v1/instances/"+url.PathEscape(instance), nil, nil)
}

// Wake asks the server to start an idled app again.
func (c *Client) Wake(ctx context.Context, app string) error {
	return c.do(ctx, "POST", "/v1/apps/"+url.PathEscape(app)+"/wake", nil, nil)
}

// ReportAccess tells the server when apps last got a request.
func (c *Client) ReportAccess(ctx context.Context, last map[string]time.Time) error {
	return c.do(ctx, "POST", "/v1/access", api.AccessReport{Apps: last}, nil)
}

func (c *Client) ListRoutes(ctx context.Context) (api.List[api.Route], error) {
	var l api.List[api.Route]
	return l, c.do(ctx, "GET", "/v1/routes", nil, &l)
}

func (c *Client) ListNodes(ctx context.Context) (api.List[api.Node], error) {
	var l api.List[api.Node]
	return l, c.do(ctx, "GET", "/v1/nodes", nil, &l)
}

// PutNode registers a node or renews its heartbeat.
func (c *Client) PutNode(ctx context.Context, n api.Node) (api.Node, error) {
	var out api.Node
	return out, c.do(ctx, "PUT", "/v1/nodes/"+url.PathEscape(n.Name), n, &out)
}

func (c *Client) ListEvents(ctx context.Context, app string, limit int) (api.List[api.Event], error) {
	q := url.Values{}
	if app != "" {
		q.Set("app", app)
	}
	if limit > 0 {
		q.Set("limit", fmt.Sprint(limit))
	}
	var l api.List[api.Event]
	return l, c.do(ctx, "GET", "/v1/events?"+q.Encode(), nil, &l)
}

func (c *Client) WatchEvents(ctx context.Context, app string, rev int64) (<-chan api.WatchEvent[api.Event], <-chan error) {
	q := url.Values{}
	if app != "" {
		q.Set("app", app)
	}
	return watch[api.Event](ctx, c, "/v1/events", q, rev)
}

// watch streams NDJSON watch events after rev. The event channel closes when
// the stream ends; the error channel then holds why (a 410 *Error when rev
// was compacted: list again).
func watch[T any](ctx context.Context, c *Client, path string, q url.Values, rev int64) (<-chan api.WatchEvent[T], <-chan error) {
	out := make(chan api.WatchEvent[T], 64)
	errc := make(chan error, 1)
	q.Set("watch", "true")
	q.Set("revision", fmt.Sprint(rev))
	go func() {
		defer close(out)
		resp, err := c.request(ctx, "GET", path+"?"+q.Encode(), nil, "")
		if err != nil {
			errc <- err
			return
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
		for sc.Scan() {
			var ev api.WatchEvent[T]
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				errc <- fmt.Errorf("watch %s: decode: %w", path, err)
				return
			}
			select {
			case out <- ev:
			case <-ctx.Done():
				return
			}
		}
		err = sc.Err()
		if err == nil {
			err = io.EOF
		}
		errc <- fmt.Errorf("watch %s: stream ended: %w", path, err)
	}()
	return out, errc
}
