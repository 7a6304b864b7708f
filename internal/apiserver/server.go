// Package apiserver serves berth's REST API under /v1: validation at the
// edge, records in the store, watches streamed as NDJSON.
package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"berth/api"
	"berth/internal/store"
	"berth/internal/tasklog"
)

// MaxBodyBytes bounds a request body (bodyLimit: larger for tasks).
const MaxBodyBytes = 1 << 20

// LogSource streams an instance's container output. The agent of the
// instance's node provides it.
type LogSource interface {
	InstanceLogs(ctx context.Context, inst api.Instance, follow bool, tail int) (io.ReadCloser, error)
}

// Server is the HTTP API.
type Server struct {
	Store   *store.Store
	Token   string
	Version string
	Cluster string
	Log     *slog.Logger
	// Logs maps a node name to where its instances' logs come from.
	Logs func(node string) LogSource
	// NodeTTL is how long a node stays ready without a heartbeat.
	NodeTTL time.Duration
	// Images resolves the tags of berth's registry at deploy time (nil:
	// no registry, every image runs as written).
	Images ImageResolver
	// TaskLogs keeps the output of task attempts.
	TaskLogs *tasklog.Store
	// Builds (builds.go): where contexts wait for their builds (default
	// <tmp>/berth-builds-<cluster>), the most a context may hold (default
	// api.DefaultBuildContextMax), and the registry built images are
	// pushed into (default: Images, when it serves the registry API).
	BuildDir        string
	BuildContextMax int64
	Registry        http.Handler

	started time.Time
	tokens  tokenCache
}

// Handler returns the API's routes behind authentication.
func (s *Server) Handler() http.Handler {
	s.started = time.Now()
	if s.NodeTTL == 0 {
		s.NodeTTL = 10 * time.Second
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	v1 := http.NewServeMux()
	allowed := map[string][]string{} // path pattern -> its methods
	for _, rt := range s.routes() {
		v1.HandleFunc(rt.pattern, allow(rt.access, rt.pattern, rt.handler))
		method, path, _ := strings.Cut(rt.pattern, " ")
		allowed[path] = append(allowed[path], method)
	}
	// A path that exists with other methods answers 405 and says which.
	paths := http.NewServeMux()
	for path, methods := range allowed {
		allow := strings.Join(methods, ", ")
		paths.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			writeError(w, http.StatusMethodNotAllowed, "", "%s %s: method not allowed (allowed: %s)", r.Method, r.URL.Path, allow)
		})
	}
	v1.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		if h, pattern := paths.Handler(r); pattern != "" {
			h.ServeHTTP(w, r)
			return
		}
		writeError(w, http.StatusNotFound, "", "no such endpoint: %s %s", r.Method, r.URL.Path)
	})
	mux.Handle("/v1/", s.authenticate(limitBody(v1)))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "", "no such endpoint: %s %s", r.Method, r.URL.Path)
	})
	return mux
}

type route struct {
	pattern string // "METHOD /path", as documented in docs/api.md
	access  access // which tokens may call it, as docs/api.md says
	handler http.HandlerFunc
}

// routes are the authenticated endpoints. Those an agent may call keep it
// to its own node (ownNode, bindNode); a gateway token may only follow
// apps, instances and routes, wake apps and report access.
func (s *Server) routes() []route {
	return []route{
		{"GET /v1/status", userAgentOrGateway, s.status},
		{"GET /v1/apps", userOrGateway, s.listApps},
		{"GET /v1/apps/{name}", userOnly, s.getApp},
		{"PUT /v1/apps/{name}", userOnly, s.putApp},
		{"DELETE /v1/apps/{name}", userOnly, s.deleteApp},
		{"POST /v1/apps/{name}/scale", userOnly, s.scaleApp},
		{"GET /v1/apps/{name}/logs", userOnly, s.appLogs},
		{"GET /v1/apps/{name}/revisions", userOnly, s.listRevisions},
		{"GET /v1/apps/{name}/revisions/{rev}", userOnly, s.getRevision},
		{"POST /v1/apps/{name}/rollback", userOnly, s.rollbackApp},
		{"GET /v1/apps/{name}/rollout", userOnly, s.rolloutStatus},
		{"POST /v1/apps/{name}/rollout/promote", userOnly, s.promoteRollout},
		{"POST /v1/apps/{name}/rollout/abort", userOnly, s.abortRollout},
		{"POST /v1/apps/{name}/rollout/pause", userOnly, s.pauseRollout},
		{"POST /v1/apps/{name}/rollout/resume", userOnly, s.resumeRollout},
		{"POST /v1/gateway/traffic", userOrGateway, s.postTraffic},
		{"POST /v1/apps/{name}/wake", userOrGateway, s.wakeApp},
		{"POST /v1/access", userOrGateway, s.postAccess},
		{"GET /v1/routes", userOrGateway, s.listRoutes},
		{"GET /v1/instances", userAgentOrGateway, s.listInstances},
		{"PUT /v1/instances/{name}/status", userOrAgent, s.putInstanceStatus},
		{"DELETE /v1/instances/{name}", userOrAgent, s.deleteInstance},
		{"GET /v1/nodes", userOnly, s.listNodes},
		{"PUT /v1/nodes/{name}", agentOnly, s.putNode},
		{"POST /v1/nodes/{name}/events", agentOnly, s.postNodeEvents},
		{"POST /v1/nodes/{name}/drain", userOnly, s.drainNode},
		{"POST /v1/nodes/{name}/activate", userOnly, s.activateNode},
		{"GET /v1/events", userOnly, s.listEvents},
		{"POST /v1/tasks", userOnly, s.submitTasks},
		{"GET /v1/tasks", userOrAgent, s.listTasks},
		{"GET /v1/tasks/{id}", userOrAgent, s.getTask},
		{"GET /v1/tasks/{id}/payload", userOrAgent, s.taskPayload},
		{"POST /v1/tasks/{id}/cancel", userOnly, s.cancelTask},
		{"GET /v1/tasks/{id}/logs", userOnly, s.taskLogs},
		{"PUT /v1/tasks/{id}/attempts/{n}/log", userOrAgent, s.putTaskLog},
		{"POST /v1/tasks/reports", userOrAgent, s.postTaskReports},
		{"POST /v1/builds", userOnly, s.submitBuild},
		{"GET /v1/builds", userOnly, s.listBuilds},
		{"GET /v1/builds/{id}", userOnly, s.getBuild},
		{"GET /v1/builds/{id}/logs", userOnly, s.buildLogs},
		{"GET /v1/builds/{id}/context", userOrAgent, s.buildContext},
		{"PUT /v1/builds/{id}/image", agentOnly, s.putBuildImage},
		{"GET /v1/queues", userOnly, s.listQueues},
		{"PUT /v1/queues/{name}", userOnly, s.putQueue},
		{"GET /v1/schedules", userOnly, s.listSchedules},
		{"GET /v1/schedules/{name}", userOnly, s.getSchedule},
		{"PUT /v1/schedules/{name}", userOnly, s.putSchedule},
		{"DELETE /v1/schedules/{name}", userOnly, s.deleteSchedule},
		{"POST /v1/tokens", userOnly, s.createToken},
		{"GET /v1/tokens", userOnly, s.listTokens},
		{"DELETE /v1/tokens/{id}", userOnly, s.deleteToken},
		{"GET /v1/images", userOnly, s.listImages},
	}
}

func limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, bodyLimit(r))
		next.ServeHTTP(w, r)
	})
}

// readBody reads the whole body, answering 413 when it is over the limit.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	b, err := io.ReadAll(r.Body)
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "", "request body is larger than the limit of %d bytes (%d MiB)", tooBig.Limit, tooBig.Limit>>20)
		return nil, false
	case err != nil:
		writeError(w, http.StatusBadRequest, "", "read request body: %v", err)
		return nil, false
	}
	return b, true
}

// decodeJSON strictly decodes a JSON body into v.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	b, ok := readBody(w, r)
	if !ok {
		return false
	}
	if err := api.DecodeStrict(b, v); err != nil {
		writeFieldError(w, err)
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, field, format string, args ...any) {
	writeJSON(w, code, api.Error{Error: fmt.Sprintf(format, args...), Field: field})
}

// writeFieldError answers 400 naming the field of a validation error.
func writeFieldError(w http.ResponseWriter, err error) {
	var fe *api.FieldError
	if errors.As(err, &fe) {
		writeJSON(w, http.StatusBadRequest, api.Error{Error: fe.Error(), Field: fe.Field})
		return
	}
	writeError(w, http.StatusBadRequest, "", "%v", err)
}

// writeStoreError maps store errors to HTTP answers.
func (s *Server) writeStoreError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, "", "%v", err)
	case errors.Is(err, store.ErrExists), errors.Is(err, store.ErrConflict):
		writeError(w, http.StatusConflict, "", "%v", err)
	case errors.Is(err, context.Canceled):
	default:
		s.Log.Error("store", "err", err)
		writeError(w, http.StatusServiceUnavailable, "", "store: %v", err)
	}
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st := api.ServerStatus{Version: s.Version, Cluster: s.Cluster, Store: "ok", Uptime: time.Since(s.started).Round(time.Second).String()}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	rev, size, err := s.Store.Status(ctx)
	if err != nil {
		st.Store = err.Error()
	}
	// A process that runs no election (a test's bare API) counts as leading.
	if l, err := s.Store.Leadership(ctx); err == nil {
		st.Leader = l.Leading || l.Server == ""
		st.Server, st.LeaderServer = l.Server, l.Leader
	}
	st.StoreRev, st.StoreBytes = rev, size
	if apps, _, err := store.Apps.List(ctx, s.Store); err == nil {
		st.Apps = len(apps)
	}
	if insts, _, err := store.Instances.List(ctx, s.Store); err == nil {
		st.Instances = len(insts)
	}
	if nodes, _, err := store.Nodes.List(ctx, s.Store); err == nil {
		st.Nodes = len(nodes)
	}
	code := http.StatusOK
	if st.Store != "ok" {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, st)
}

// wantsYAML reports whether a request body is YAML rather than JSON.
func wantsYAML(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	return strings.Contains(ct, "yaml")
}
