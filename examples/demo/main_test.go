package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func get(t *testing.T, srv *httptest.Server, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", path, err)
	}
	return resp.StatusCode, string(body)
}

func newTestServer(t *testing.T, d *demo) *httptest.Server {
	t.Helper()
	if d.exit == nil {
		d.exit = func(code int) { t.Errorf("unexpected exit(%d)", code) }
	}
	srv := httptest.NewServer(d.routes())
	t.Cleanup(srv.Close)
	return srv
}

func TestHello(t *testing.T) {
	srv := newTestServer(t, &demo{hostname: "box", greeting: "hi"})
	code, body := get(t, srv, "/")
	if code != 200 || body != "hello from box (GREETING=hi)\n" {
		t.Fatalf("GET / = %d %q", code, body)
	}
	if code, _ := get(t, srv, "/nope"); code != http.StatusNotFound {
		t.Fatalf("GET /nope = %d, want 404", code)
	}
}

func TestHelloVersion(t *testing.T) {
	srv := newTestServer(t, &demo{hostname: "box", greeting: "hi", version: "2"})
	if code, body := get(t, srv, "/"); code != 200 || body != "hello from box (GREETING=hi) version=2\n" {
		t.Fatalf("GET / = %d %q", code, body)
	}
}

func TestHealthzAndSick(t *testing.T) {
	srv := newTestServer(t, &demo{hostname: "box"})
	if code, body := get(t, srv, "/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("GET /healthz = %d %q, want 200 ok", code, body)
	}
	if code, _ := get(t, srv, "/sick"); code != 200 {
		t.Fatalf("GET /sick = %d, want 200", code)
	}
	if code, body := get(t, srv, "/healthz"); code != 500 || body != "sick\n" {
		t.Fatalf("GET /healthz after /sick = %d %q, want 500 sick", code, body)
	}
}

func TestSickPost(t *testing.T) {
	d := &demo{hostname: "box"}
	srv := newTestServer(t, d)
	resp, err := http.Post(srv.URL+"/sick", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !d.sick.Load() {
		t.Fatalf("POST /sick = %d, sick=%v", resp.StatusCode, d.sick.Load())
	}
}

func TestSlow(t *testing.T) {
	srv := newTestServer(t, &demo{hostname: "box"})
	start := time.Now()
	if code, body := get(t, srv, "/slow?ms=100"); code != 200 || body != "slept 100ms\n" {
		t.Fatalf("GET /slow = %d %q", code, body)
	}
	if took := time.Since(start); took < 100*time.Millisecond {
		t.Fatalf("GET /slow?ms=100 took only %v", took)
	}
	if code, _ := get(t, srv, "/slow?ms=x"); code != http.StatusBadRequest {
		t.Fatalf("GET /slow?ms=x = %d, want 400", code)
	}
}

func TestCrash(t *testing.T) {
	exited := make(chan int, 1)
	srv := newTestServer(t, &demo{hostname: "box", exit: func(code int) { exited <- code }})
	if code, _ := get(t, srv, "/crash"); code != 200 {
		t.Fatalf("GET /crash = %d, want 200", code)
	}
	select {
	case code := <-exited:
		if code != 3 {
			t.Fatalf("exit code %d, want 3", code)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no exit after /crash")
	}
}

func TestEventsAndWebSocket(t *testing.T) {
	srv := httptest.NewServer((&demo{}).routes())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/events?n=3&ms=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := string(body); got != "data: 1\n\ndata: 2\n\ndata: 3\n\n" || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events = %q (%s)", got, resp.Header.Get("Content-Type"))
	}
	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageText, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.Read(ctx); err != nil || string(msg) != "ping" {
		t.Fatalf("echo = %q, %v", msg, err)
	}
}
