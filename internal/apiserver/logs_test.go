package apiserver

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"berth/api"
	"berth/internal/store"
)

// lineSource says one line per container and, when following, keeps the
// stream open until the request ends. It keeps the calls made to it.
type lineSource struct {
	mu    sync.Mutex
	calls []string // "container tail=N"
}

func (l *lineSource) InstanceLogs(ctx context.Context, inst api.Instance, follow bool, tail int) (io.ReadCloser, error) {
	l.mu.Lock()
	l.calls = append(l.calls, fmt.Sprintf("%s tail=%d", inst.Status.ContainerID, tail))
	l.mu.Unlock()
	pr, pw := io.Pipe()
	go func() {
		io.WriteString(pw, "hello from "+inst.Status.ContainerID+"\n")
		if follow {
			<-ctx.Done()
		}
		pw.Close()
	}()
	return pr, nil
}

// A follow of an app's logs picks up a container that starts after it
// began, with all of its output, and leaves the restarts of a container it
// follows to the LogSource (a second stream would show its lines twice).
func TestAppLogsFollowNewInstances(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.OpenEmbedded(ctx, t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	src := &lineSource{}
	srv := &Server{Store: st, Token: "secret", Log: log, Logs: func(string) LogSource { return src }}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()

	put := func(name, container string, started time.Time) {
		inst := api.Instance{Name: name, App: "web", Node: "n1", Desired: api.DesiredRun,
			Status: api.Status{State: api.StateRunning, ContainerID: container, StartedAt: started}}
		if _, err := st.Txn(ctx, store.Instances.PutAny(name, inst)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Txn(ctx, store.Apps.PutAny("web", api.App{Spec: api.AppSpec{Name: "web"}})); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	put("web-1", "c1", t0)

	req, _ := http.NewRequestWithContext(ctx, "GET", hs.URL+"/v1/apps/web/logs?follow=true&tail=5", nil)
	req.Header.Set("Authorization", "Bearer secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	next := func() string {
		if !lines.Scan() {
			t.Fatalf("log stream ended: %v", lines.Err())
		}
		return lines.Text()
	}
	if got := next(); got != "web-1 | hello from c1" {
		t.Fatalf("first line %q", got)
	}
	put("web-1", "c1", t0.Add(time.Minute)) // restarted
	put("web-2", "c2", t0)
	if got := next(); got != "web-2 | hello from c2" {
		t.Fatalf("after a new instance started: %q, want its line", got)
	}
	put("web-1", "c3", t0.Add(2*time.Minute)) // made again
	if got := next(); got != "web-1 | hello from c3" {
		t.Fatalf("after web-1's container was made again: %q, want its line", got)
	}
	resp.Body.Close()
	hs.Close() // waits for the request's handler to end
	want := []string{"c1 tail=5", "c2 tail=-1", "c3 tail=-1"}
	if !slices.Equal(src.calls, want) {
		t.Fatalf("streams opened: %q, want %q", src.calls, want)
	}
}
