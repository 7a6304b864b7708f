package apiserver

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"berth/api"
	"berth/internal/store"
)

// GET /v1/instances?app=&node=[&watch=true&revision=N]
func (s *Server) listInstances(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	app, node := q.Get("app"), q.Get("node")
	if !s.ownNodeFilter(w, r, node, "instances") {
		return
	}
	match := func(i *api.Instance) bool {
		return (app == "" || i.App == app) && (node == "" || i.Node == node)
	}
	if q.Get("watch") == "true" {
		rev, ok := watchRevision(w, r)
		if ok {
			streamWatch(s, w, r, store.Instances, rev, watchFilter{Node: node, App: app})
		}
		return
	}
	all, rev, err := store.Instances.List(r.Context(), s.Store)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	items := all[:0]
	for i := range all {
		if match(&all[i]) {
			items = append(items, all[i])
		}
	}
	sort.Slice(items, func(a, b int) bool {
		if items[a].App != items[b].App {
			return items[a].App < items[b].App
		}
		return items[a].Index < items[b].Index
	})
	writeJSON(w, http.StatusOK, api.List[api.Instance]{Items: items, Revision: rev})
}

// putInstanceStatus records what an agent reports about one of its
// instances, and the events that the change of state means.
func (s *Server) putInstanceStatus(w http.ResponseWriter, r *http.Request) {
	var st api.Status
	if !decodeJSON(w, r, &st) {
		return
	}
	if !validState(st.State) {
		writeError(w, http.StatusBadRequest, "state", "state: %q is not an instance state", st.State)
		return
	}
	st.Updated = time.Now().UTC()
	name := r.PathValue("name")
	ctx := r.Context()
	for {
		inst, err := store.Instances.Get(ctx, s.Store, name)
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		if !s.ownNode(w, r, inst.Node, "instance "+name) {
			return
		}
		old := inst.Status
		inst.Status = st
		ops := []store.Op{store.Instances.Put(name, inst, inst.Version)}
		for _, e := range StatusEvents(inst, old) {
			op, err := s.Store.AppendEvent(ctx, e)
			if err != nil {
				s.writeStoreError(w, err)
				return
			}
			ops = append(ops, op)
		}
		rev, err := s.Store.Txn(ctx, ops...)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		inst.Version = rev
		writeJSON(w, http.StatusOK, inst)
		return
	}
}

func validState(s string) bool {
	switch s {
	case api.StatePending, api.StateStarting, api.StateRunning, api.StateUnhealthy,
		api.StateStopping, api.StateExited, api.StateFailed, api.StateIdle:
		return true
	}
	return false
}

// StatusEvents names what changed between two reports of an instance, in
// the order it happened: an exit, then the restart after its backoff.
func StatusEvents(inst api.Instance, old api.Status) []api.Event {
	st := inst.Status
	ev := func(kind, format string, args ...any) api.Event {
		return api.Event{Kind: kind, App: inst.App, Instance: inst.Name, Node: inst.Node, Message: fmt.Sprintf(format, args...)}
	}
	var out []api.Event
	restarted := st.Restarts > old.Restarts
	if restarted && st.State != api.StateExited && old.State != api.StateExited {
		// The report of the exit itself was missed (say, the agent could not
		// reach the server then): say it now, before what followed.
		out = append(out, ev("exited", "%s", exitMessage(st)))
	}
	if st.State == old.State && st.ContainerID == old.ContainerID && st.Healthy == old.Healthy && st.Error == old.Error {
		return out
	}
	switch st.State {
	case api.StateStarting:
		switch {
		case old.State == api.StateExited && st.ContainerID == old.ContainerID || restarted:
			out = append(out, ev("restarted", "restart %d after exit code %s%s", st.Restarts, exitCode(st.ExitCode), at(st.Address)))
		case old.State != api.StateStarting || st.ContainerID != old.ContainerID:
			out = append(out, ev("started", "container %s%s", short(st.ContainerID), at(st.Address)))
		}
	case api.StateRunning:
		if !old.Healthy || old.State != api.StateRunning {
			out = append(out, ev("healthy", "%s", healthyMessage(inst)))
		}
	case api.StateUnhealthy:
		if old.State != api.StateUnhealthy || st.Replace != old.Replace {
			msg := st.Error
			if st.Replace {
				msg += " (to be replaced)"
			}
			out = append(out, ev("unhealthy", "%s", msg))
		}
	case api.StateExited:
		if old.State != api.StateExited {
			out = append(out, ev("exited", "%s", exitMessage(st)))
		}
	case api.StateFailed:
		if old.State != api.StateFailed || st.Error != old.Error {
			out = append(out, ev("failed", "%s", st.Error))
		}
	}
	return out
}

// exitMessage is the exit code and the agent's word on it, which says
// when it restarts ("exited with code 1; restarting in 2s").
func exitMessage(st api.Status) string {
	code := exitCode(st.ExitCode)
	if strings.HasPrefix(st.Error, "exited with code "+code) {
		return st.Error
	}
	return "exit code " + code + suffix(st.Error)
}

// healthyMessage says where a healthy instance answers, or, without a
// port, that it runs.
func healthyMessage(inst api.Instance) string {
	switch {
	case inst.Status.Address != "":
		return "answering at " + inst.Status.Address
	case inst.Spec.Health == nil:
		return "running (no health check: up long enough without a restart)"
	}
	return "health check passed"
}

// at is " at ADDRESS", or nothing for an instance without a port.
func at(address string) string {
	if address == "" {
		return ""
	}
	return " at " + address
}

func exitCode(c *int) string {
	if c == nil {
		return "?"
	}
	return fmt.Sprint(*c)
}

func suffix(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// deleteInstance is the agent saying that a retired instance's container
// is gone; the record goes with it.
func (s *Server) deleteInstance(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	ctx := r.Context()
	for {
		inst, err := store.Instances.Get(ctx, s.Store, name)
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		if !s.ownNode(w, r, inst.Node, "instance "+name) {
			return
		}
		if inst.Desired != api.DesiredStop {
			writeError(w, http.StatusConflict, "", "instance %s is still wanted; only a retired instance can be removed", name)
			return
		}
		ev, err := s.Store.AppendEvent(ctx, api.Event{Kind: "removed", App: inst.App, Instance: name, Node: inst.Node, Message: inst.StopReason})
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		_, err = s.Store.Txn(ctx, store.Instances.Delete(name, inst.Version), ev)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
}
