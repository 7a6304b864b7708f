package apiserver

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"

	"berth/api"
	"berth/internal/store"
)

// GET /v1/apps/{name}/logs?follow=true&tail=N: the output of all of the
// app's instances, each line prefixed by its instance. A follow also picks
// up the containers that start later (a scale-up, a rolling update, a
// container made again), with all of their output, until the client goes
// away; the restarts of a container are its LogSource's to follow.
func (s *Server) appLogs(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	q := r.URL.Query()
	follow := q.Get("follow") == "true"
	tail := -1
	if v := q.Get("tail"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			writeError(w, http.StatusBadRequest, "tail", "tail: %q is not a number", v)
			return
		}
		tail = n
	}
	ctx := r.Context()
	if _, err := store.Apps.Get(ctx, s.Store, name); err != nil {
		s.writeStoreError(w, err)
		return
	}
	all, rev, err := store.Instances.List(ctx, s.Store)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	var mu sync.Mutex // one line at a time from many instances
	writeLine := func(prefix, line string) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(w, "%s | %s\n", prefix, line)
		if flusher != nil {
			flusher.Flush()
		}
	}
	var wg sync.WaitGroup
	streamed := map[string]bool{} // container ids: one stream each, for all of its runs
	stream := func(inst api.Instance, tail int) {
		id := inst.Status.ContainerID
		if inst.App != name || id == "" || inst.Node == "" || streamed[id] {
			return
		}
		streamed[id] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.streamInstanceLogs(ctx, inst, follow, tail, writeLine)
		}()
	}
	for _, inst := range all {
		stream(inst, tail)
	}
	if follow {
		events, _ := store.Instances.Watch(ctx, s.Store, rev)
		for ev := range events {
			if !ev.Deleted {
				stream(ev.Object, -1) // a new container: all it has said
			}
		}
	}
	wg.Wait()
}

func (s *Server) streamInstanceLogs(ctx context.Context, inst api.Instance, follow bool, tail int, writeLine func(string, string)) {
	var src LogSource
	if s.Logs != nil {
		src = s.Logs(inst.Node)
	}
	if src == nil {
		writeLine(inst.Name, fmt.Sprintf("(logs of node %s are not reachable from this server)", inst.Node))
		return
	}
	rc, err := src.InstanceLogs(ctx, inst, follow, tail)
	if err != nil {
		writeLine(inst.Name, fmt.Sprintf("(logs: %v)", err))
		return
	}
	defer rc.Close()
	go func() { <-ctx.Done(); rc.Close() }()
	sc := bufio.NewScanner(rc)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		writeLine(inst.Name, sc.Text())
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		writeLine(inst.Name, fmt.Sprintf("(logs: %v)", err))
	}
}
