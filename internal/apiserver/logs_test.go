package apiserver

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"berth/api"
	"berth/internal/store"
)

// lineSource says one line per container and, when following, keeps the
// stream open until the request ends.
type lineSource struct{}

func (lineSource) InstanceLogs(ctx context.Context, inst api.Instance, follow bool, tail int) (io.ReadCloser, error) {
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

// A follow of an app's logs picks up a container that starts after it began.
func TestAppLogsFollowNewInstances(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.OpenEmbedded(ctx, t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv := &Server{Store: st, Token: "secret", Log: log, Logs: func(string) LogSource { return lineSource{} }}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()

	put := func(name, container string) {
		inst := api.Instance{Name: name, App: "web", Node: "n1", Desired: api.DesiredRun,
			Status: api.Status{State: api.StateRunning, ContainerID: container}}
		if _, err := st.Txn(ctx, store.Instances.PutAny(name, inst)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Txn(ctx, store.Apps.PutAny("web", api.App{Spec: api.AppSpec{Name: "web"}})); err != nil {
		t.Fatal(err)
	}
	put("web-1", "c1")

	req, _ := http.NewRequestWithContext(ctx, "GET", hs.URL+"/v1/apps/web/logs?follow=true", nil)
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
	put("web-2", "c2")
	if got := next(); got != "web-2 | hello from c2" {
		t.Fatalf("after a new instance started: %q, want its line", got)
	}
}
