package client

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"berth/api"
)

// fakeServer answers /v1/status with its name and counts the requests it got.
type fakeServer struct {
	*httptest.Server
	name string
	hits atomic.Int32
}

func newFake(t *testing.T, name string, handler http.HandlerFunc) *fakeServer {
	f := &fakeServer{name: name}
	if handler == nil {
		handler = func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "Bearer tok" {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			if strings.HasPrefix(r.URL.Path, "/v1/events") && r.URL.Query().Get("watch") == "true" {
				w.Header().Set("Content-Type", "application/x-ndjson")
				_ = json.NewEncoder(w).Encode(api.WatchEvent[api.Event]{Type: "put", Object: api.Event{Message: name}, Revision: 5})
				return
			}
			_ = json.NewEncoder(w).Encode(api.ServerStatus{Cluster: name})
		}
	}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.hits.Add(1)
		handler(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

// deadAddr is an address where nothing listens.
func deadAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestOneAddressAsBefore(t *testing.T) {
	a := newFake(t, "a", nil)
	c := New(strings.TrimPrefix(a.URL, "http://"), "tok")
	if c.Addr() != a.URL {
		t.Errorf("Addr() = %q, want %q", c.Addr(), a.URL)
	}
	st, err := c.Status(ctx(t))
	if err != nil || st.Cluster != "a" {
		t.Errorf("Status = %+v, %v", st, err)
	}
}

// A server that refuses connections is skipped, and the one that answered
// is tried first from then on.
func TestFailsOverWhenAServerIsDown(t *testing.T) {
	b := newFake(t, "b", nil)
	c := New(deadAddr(t)+", "+b.URL+"/", "tok")
	for range 3 {
		st, err := c.Status(ctx(t))
		if err != nil || st.Cluster != "b" {
			t.Fatalf("Status = %+v, %v; want b's", st, err)
		}
	}
	if c.Addr() != b.URL {
		t.Errorf("Addr() = %q, want %q (the one that answered)", c.Addr(), b.URL)
	}
	if got := c.Servers(); len(got) != 2 {
		t.Errorf("Servers() = %v", got)
	}
}

func TestAllServersDown(t *testing.T) {
	c := New(deadAddr(t)+","+deadAddr(t), "tok")
	if _, err := c.Status(ctx(t)); err == nil || !strings.Contains(err.Error(), "berth server at") {
		t.Errorf("Status with every server down: %v", err)
	}
}

// An answer, even an error, is the answer: no other server is asked.
func TestAnAnswerIsFinal(t *testing.T) {
	a := newFake(t, "a", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusConflict)
		_ = json.NewEncoder(w).Encode(api.Error{Error: "changed concurrently"})
	})
	b := newFake(t, "b", nil)
	c := New(a.URL+","+b.URL, "tok")
	if _, err := c.Status(ctx(t)); !IsStatus(err, http.StatusConflict) {
		t.Errorf("Status = %v, want the 409", err)
	}
	if b.hits.Load() != 0 {
		t.Errorf("b asked %d times after a's answer", b.hits.Load())
	}
}

// 503 (the server's store does not answer) sends reads and idempotent
// writes on, but not a POST that the first server may have applied.
func TestUnavailableStore(t *testing.T) {
	a := newFake(t, "a", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(api.Error{Error: "store: no leader"})
	})
	b := newFake(t, "b", nil)
	c := New(a.URL+","+b.URL, "tok")
	if st, err := c.Status(ctx(t)); err != nil || st.Cluster != "b" {
		t.Errorf("GET after a 503: %+v, %v; want b's answer", st, err)
	}
	c = New(a.URL+","+b.URL, "tok")
	before := b.hits.Load()
	if _, err := c.Scale(ctx(t), "web", 2); !IsStatus(err, http.StatusServiceUnavailable) {
		t.Errorf("POST after a 503: %v, want the 503", err)
	}
	if b.hits.Load() != before {
		t.Error("a POST was sent on after a 503")
	}
}

// A connection dropped after the request was sent: a GET goes on to the
// next server, a POST does not (it may have been applied).
func TestDroppedConnection(t *testing.T) {
	drop := func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}
	a := newFake(t, "a", drop)
	b := newFake(t, "b", nil)
	c := New(a.URL+","+b.URL, "tok")
	if st, err := c.Status(ctx(t)); err != nil || st.Cluster != "b" {
		t.Errorf("GET after a dropped connection: %+v, %v", st, err)
	}
	c = New(a.URL+","+b.URL, "tok")
	before := b.hits.Load()
	if _, err := c.Scale(ctx(t), "web", 2); err == nil {
		t.Error("POST on a dropped connection succeeded")
	}
	if b.hits.Load() != before {
		t.Error("a POST was sent again after a dropped connection")
	}
}

// A request body is sent whole to the server that answers.
func TestBodyResentOnFailover(t *testing.T) {
	var got atomic.Value
	b := newFake(t, "b", func(w http.ResponseWriter, r *http.Request) {
		var n api.Node
		_ = json.NewDecoder(r.Body).Decode(&n)
		got.Store(n.Name)
		_ = json.NewEncoder(w).Encode(n)
	})
	c := New(deadAddr(t)+","+b.URL, "tok")
	if _, err := c.PutNode(ctx(t), api.Node{Name: "n2"}); err != nil {
		t.Fatal(err)
	}
	if got.Load() != "n2" {
		t.Errorf("b got node %v, want n2", got.Load())
	}
}

func TestWatchFailsOver(t *testing.T) {
	b := newFake(t, "b", nil)
	c := New(deadAddr(t)+","+b.URL, "tok")
	events, errc := c.WatchEvents(ctx(t), "", 0)
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatalf("watch ended: %v", <-errc)
		}
		if ev.Object.Message != "b" {
			t.Errorf("event %+v, want b's", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no event")
	}
}
