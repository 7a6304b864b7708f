package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	json "github.com/goccy/go-json"

	"berth/api"
)

// fleet is the simulated nodes. They are not agent.Agent: a thousand of
// those (each with its work queue, engine watch and task runner, and a
// decoded copy of every instance it follows) would spend this machine's
// two CPUs on themselves. A simulated node does what the server sees of
// an agent, through the API with its own agent token: it registers and
// heartbeats (PUT /v1/nodes/{name}), follows its instances with a list and
// a watch (GET /v1/instances?node=), reading only the fields it needs, and
// reports each new instance running (PUT /v1/instances/{name}/status).
// The reports of all nodes go through one pool of workers: a node's own
// concurrency would only queue in the server.
type fleet struct {
	base      string
	http      *http.Client
	nodes     []*simNode
	heartbeat time.Duration
	capacity  api.Capacity

	reports chan report
	// beats bounds the heartbeats in flight (reports are bounded by their
	// workers): every request in flight is a connection, both of whose
	// ends are in this process, and file descriptors are limited.
	beats chan struct{}

	watchEnds  atomic.Int64 // watch streams that ended (the node listed again)
	reported   atomic.Int64
	removed    atomic.Int64
	failed     atomic.Int64 // reports or heartbeats answered with an error
	heartbeats atomic.Int64
	mu         sync.Mutex
	lastErr    string
}

type simNode struct {
	name, zone, token string
	mu                sync.Mutex
	reported          map[string]bool // instances reported running, or queued to be
}

type report struct {
	node   *simNode
	name   string
	remove bool // retired: say its container is gone
	tries  int
}

func newFleet(base string, nodes, zones int, heartbeat time.Duration, capacity api.Capacity, instances int) *fleet {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
	}
	f := &fleet{base: base, http: &http.Client{Transport: tr}, heartbeat: heartbeat, capacity: capacity,
		reports: make(chan report, instances+nodes), beats: make(chan struct{}, 128)}
	for i := range nodes {
		f.nodes = append(f.nodes, &simNode{name: fmt.Sprintf("sim-%05d", i), zone: zoneName(i % zones),
			reported: map[string]bool{}})
	}
	return f
}

func zoneName(i int) string { return string(rune('a' + i)) }

// tokens gives every node an agent token of its own (POST /v1/tokens).
func (f *fleet) tokens(ctx context.Context, userToken string) error {
	return parallel(ctx, 8, len(f.nodes), func(i int) error {
		var nt api.NewToken
		err := f.call(ctx, "POST", "/v1/tokens", userToken, api.TokenRequest{Role: api.RoleAgent, Description: f.nodes[i].name}, &nt)
		f.nodes[i].token = nt.Secret
		return err
	})
}

// register puts every node, a few at a time.
func (f *fleet) register(ctx context.Context) error {
	return parallel(ctx, 8, len(f.nodes), func(i int) error { return f.putNode(ctx, f.nodes[i]) })
}

func (f *fleet) putNode(ctx context.Context, n *simNode) error {
	return f.call(ctx, "PUT", "/v1/nodes/"+n.name, n.token, api.Node{Name: n.name, Address: "10.0.0.1",
		Capacity: f.capacity, Labels: map[string]string{"zone": n.zone}, Engine: "simulated"}, nil)
}

// run starts every node's heartbeat and follow loop and the report workers.
func (f *fleet) run(ctx context.Context, workers int) {
	for _, n := range f.nodes {
		go f.beat(ctx, n)
		go f.follow(ctx, n)
	}
	for range workers {
		go f.work(ctx)
	}
}

func (f *fleet) beat(ctx context.Context, n *simNode) {
	// Spread the nodes' heartbeats over the period, as independent agents'.
	if !sleepCtx(ctx, rand.N(f.heartbeat)) {
		return
	}
	t := time.NewTicker(f.heartbeat)
	defer t.Stop()
	for {
		select {
		case f.beats <- struct{}{}:
		case <-ctx.Done():
			return
		}
		c, cancel := context.WithTimeout(ctx, f.heartbeat)
		if err := f.putNode(c, n); err != nil && ctx.Err() == nil {
			f.fail(err)
		}
		cancel()
		<-f.beats
		f.heartbeats.Add(1)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// instanceLine is what a node reads of an instance.
type instanceLine struct {
	Name    string `json:"name"`
	Desired string `json:"desired"`
	Status  struct {
		State string `json:"state"`
	} `json:"status"`
}

// follow lists the node's instances, then watches them from the list's
// revision, and lists again whenever the watch ends.
func (f *fleet) follow(ctx context.Context, n *simNode) {
	q := url.Values{"node": {n.name}}
	for ctx.Err() == nil {
		var list struct {
			Items    []instanceLine `json:"items"`
			Revision int64          `json:"revision"`
		}
		if err := f.call(ctx, "GET", "/v1/instances?"+q.Encode(), n.token, nil, &list); err != nil {
			if ctx.Err() == nil {
				f.fail(err)
				sleepCtx(ctx, time.Second)
			}
			continue
		}
		for _, it := range list.Items {
			f.saw(n, it, false)
		}
		err := f.watch(ctx, n, list.Revision)
		if ctx.Err() != nil {
			return
		}
		f.watchEnds.Add(1)
		f.fail(fmt.Errorf("watch of %s ended: %v", n.name, err))
	}
}

func (f *fleet) watch(ctx context.Context, n *simNode, rev int64) error {
	q := url.Values{"node": {n.name}, "watch": {"true"}, "revision": {fmt.Sprint(rev)}}
	req, err := http.NewRequestWithContext(ctx, "GET", f.base+"/v1/instances?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+n.token)
	resp, err := f.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 4096), 4*1024*1024) // thousands of these: small until a line needs more
	for sc.Scan() {
		var ev struct {
			Type   string       `json:"type"`
			Object instanceLine `json:"object"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return err
		}
		if ev.Type == "put" || ev.Type == "delete" {
			f.saw(n, ev.Object, ev.Type == "delete")
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return io.EOF
}

// saw queues what an instance's change asks of its node.
func (f *fleet) saw(n *simNode, it instanceLine, deleted bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case deleted:
		delete(n.reported, it.Name)
	case it.Desired == api.DesiredStop:
		if n.reported[it.Name] {
			delete(n.reported, it.Name)
			f.reports <- report{node: n, name: it.Name, remove: true}
		}
	case it.Desired == api.DesiredRun && it.Status.State != api.StateRunning && !n.reported[it.Name]:
		n.reported[it.Name] = true
		f.reports <- report{node: n, name: it.Name}
	}
}

func (f *fleet) work(ctx context.Context) {
	for {
		var r report
		select {
		case <-ctx.Done():
			return
		case r = <-f.reports:
		}
		path := "/v1/instances/" + r.name
		var err error
		if r.remove {
			err = f.call(ctx, "DELETE", path, r.node.token, nil, nil)
		} else {
			now := time.Now().UTC()
			err = f.call(ctx, "PUT", path+"/status", r.node.token, api.Status{State: api.StateRunning, Healthy: true,
				ContainerID: "sim-" + r.name, Address: "10.0.0.1:30000", StartedAt: now}, nil)
		}
		switch {
		case err == nil && r.remove:
			f.removed.Add(1)
		case err == nil:
			f.reported.Add(1)
		case ctx.Err() != nil:
			return
		default:
			f.fail(err)
			if r.tries < 5 {
				r.tries++
				go func() {
					sleepCtx(ctx, time.Second)
					f.reports <- r
				}()
			}
		}
	}
}

func (f *fleet) fail(err error) {
	f.failed.Add(1)
	f.mu.Lock()
	f.lastErr = err.Error()
	f.mu.Unlock()
}

// call sends one JSON request with token and decodes a JSON answer into
// out (may be nil).
func (f *fleet) call(ctx context.Context, method, path, token string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, f.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := f.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// parallel runs do(0..n-1), width at a time, and returns the first error.
func parallel(ctx context.Context, width, n int, do func(i int) error) error {
	var next atomic.Int64
	errs := make(chan error, width)
	for range width {
		go func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					errs <- ctx.Err()
					return
				}
				if err := do(i); err != nil {
					next.Store(int64(n))
					errs <- err
					return
				}
			}
		}()
	}
	var first error
	for range width {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
