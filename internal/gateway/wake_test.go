package gateway

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeWaker counts wakes and calls onWake, if set, for each.
type fakeWaker struct {
	calls  atomic.Int64
	err    error
	onWake func(app string)
	mu     sync.Mutex
	apps   []string
}

func (w *fakeWaker) Wake(ctx context.Context, app string) error {
	w.calls.Add(1)
	w.mu.Lock()
	w.apps = append(w.apps, app)
	w.mu.Unlock()
	time.Sleep(20 * time.Millisecond) // a round trip to the server
	if w.onWake != nil {
		w.onWake(app)
	}
	return w.err
}

func idleTable(upstreams []string, wakeTimeout time.Duration) *Table {
	return NewTable([]AppRoutes{
		{App: "sleepy", Hosts: []string{"sleepy.test"}, Upstreams: upstreams, IdleEnabled: true, Idle: len(upstreams) == 0, WakeTimeout: wakeTimeout},
		{App: "awake", Hosts: []string{"awake.test"}, Upstreams: upstreams},
	})
}

func TestWakeCoalescesAndForwards(t *testing.T) {
	w := &fakeWaker{}
	p, addr := startProxy(t, w)
	up := &named{name: "up"}
	upAddr := serveUp(t, up.ServeHTTP)
	p.SetTable(idleTable(nil, 10*time.Second))

	const n = 50
	codes := make(chan int, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
			req.Host = "sleepy.test"
			resp, err := httpc.Do(req)
			if err != nil {
				t.Error(err)
				codes <- 0
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	waitFor(t, func() bool { return p.Wakes() == 1 && w.calls.Load() == 1 })
	time.Sleep(200 * time.Millisecond) // every request arrives and waits
	select {
	case c := <-codes:
		t.Fatalf("a request was answered (%d) before the app had an instance", c)
	default:
	}
	// An unrelated table change does not release them.
	p.SetTable(idleTable(nil, 10*time.Second))
	time.Sleep(50 * time.Millisecond)
	if len(codes) != 0 {
		t.Fatal("requests released without an upstream")
	}
	p.SetTable(idleTable([]string{upAddr}, 10*time.Second))
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 200 {
			t.Fatalf("held request got %d", c)
		}
	}
	if got := w.calls.Load(); got != 1 || p.Wakes() != 1 {
		t.Fatalf("%d wake calls (Wakes() %d) for %d concurrent requests, want 1", got, p.Wakes(), n)
	}
	if up.n.Load() != n {
		t.Fatalf("upstream got %d requests", up.n.Load())
	}
	// Awake now: no more wakes.
	if resp, _ := get(t, addr, "sleepy.test"); resp.StatusCode != 200 || p.Wakes() != 1 {
		t.Fatalf("%d, %d wakes", resp.StatusCode, p.Wakes())
	}
}

func TestWakeFromWaker(t *testing.T) {
	// The waker's own table update (as the follower does) releases the
	// request, even when it comes before Wake returns.
	var p *Proxy
	upAddr := serveUp(t, (&named{name: "up"}).ServeHTTP)
	w := &fakeWaker{onWake: func(string) { p.SetTable(idleTable([]string{upAddr}, 0)) }}
	p, addr := startProxy(t, w)
	p.SetTable(idleTable(nil, 0))
	resp, body := get(t, addr, "sleepy.test")
	if resp.StatusCode != 200 || body != "up" || p.Wakes() != 1 {
		t.Fatalf("%d %q, %d wakes", resp.StatusCode, body, p.Wakes())
	}
}

func TestWakeTimeout(t *testing.T) {
	w := &fakeWaker{}
	p, addr := startProxy(t, w)
	p.SetTable(idleTable(nil, 300*time.Millisecond))
	start := time.Now()
	resp, body := get(t, addr, "sleepy.test")
	took := time.Since(start)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "1" || !strings.Contains(body, "sleepy") {
		t.Fatalf("%d Retry-After %q %q", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if took < 300*time.Millisecond || took > 2*time.Second {
		t.Fatalf("answered after %v, want the wake timeout (300ms)", took)
	}
	if w.calls.Load() != 1 {
		t.Fatalf("%d wake calls", w.calls.Load())
	}
	// After the wake timeout, a new request asks again.
	get(t, addr, "sleepy.test")
	if w.calls.Load() != 2 {
		t.Fatalf("%d wake calls after a wake that brought nothing, want 2", w.calls.Load())
	}
}

func TestWakeError(t *testing.T) {
	w := &fakeWaker{err: errors.New("app sleepy: no node has room")}
	p, addr := startProxy(t, w)
	p.SetTable(idleTable(nil, 5*time.Second))
	start := time.Now()
	resp, body := get(t, addr, "sleepy.test")
	if resp.StatusCode != 503 || !strings.Contains(body, "no node has room") || time.Since(start) > 2*time.Second {
		t.Fatalf("%d %q after %v", resp.StatusCode, body, time.Since(start))
	}
	// The next request tries again.
	get(t, addr, "sleepy.test")
	if w.calls.Load() != 2 {
		t.Fatalf("%d wake calls", w.calls.Load())
	}
	// Without a waker, the error says so.
	p2, addr2 := startProxy(t, nil)
	p2.SetTable(idleTable(nil, 5*time.Second))
	if resp, body := get(t, addr2, "sleepy.test"); resp.StatusCode != 503 || !strings.Contains(body, "no waker") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}

func TestWakeAppRemoved(t *testing.T) {
	w := &fakeWaker{}
	p, addr := startProxy(t, w)
	p.SetTable(idleTable(nil, 10*time.Second))
	done := make(chan int)
	go func() {
		resp, _ := get(t, addr, "sleepy.test")
		done <- resp.StatusCode
	}()
	waitFor(t, func() bool { return w.calls.Load() == 1 })
	p.SetTable(NewTable(nil))
	select {
	case c := <-done:
		if c != 503 {
			t.Fatalf("%d", c)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("request for a removed app still held")
	}
}

func TestWakeShutdown(t *testing.T) {
	w := &fakeWaker{}
	p, addr := startProxy(t, w)
	p.SetTable(idleTable(nil, 10*time.Second))
	done := make(chan int)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		req.Host = "sleepy.test"
		resp, err := httpc.Do(req)
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	waitFor(t, func() bool { return w.calls.Load() == 1 })
	go p.Shutdown()
	select {
	case c := <-done:
		if c != 503 {
			t.Fatalf("%d", c)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("held request not answered at shutdown")
	}
}
