// Package gitserve serves an app's git repository over smart HTTP, through
// `git http-backend`, so that `git push berth main` builds and deploys the
// pushed commit. The work is done by a pre-receive hook (Hook): it runs
// before any ref moves, its output reaches the pusher as "remote:" lines,
// and its exit status accepts or rejects the push.
package gitserve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"berth/api"
)

// Prefix is where the repositories are served: <Prefix><app>.git/...
const Prefix = "/git/"

// Server serves <Root>/<app>.git for every app name.
type Server struct {
	Root string // the bare repositories, made on the first push
	// Authorize returns a token's role ("" for no such token).
	Authorize func(ctx context.Context, token string) (string, error)
	// Hook is the command line of the pre-receive hook; HookEnv adds to
	// its environment, given the app and the pusher's token.
	Hook    []string
	HookEnv func(app, token string) []string
	// MaxPush bounds the body of one request (a push's pack).
	MaxPush int64
	Log     *slog.Logger

	mu sync.Mutex // made once per repository
}

// service is what a smart HTTP request may ask for: the dumb protocol
// (plain files of the repository) is not served.
var service = regexp.MustCompile(`^([^/]+)\.git/(info/refs|git-upload-pack|git-receive-pack)$`)

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest := strings.TrimPrefix(r.URL.Path, Prefix)
	m := service.FindStringSubmatch(rest)
	if m == nil {
		httpError(w, http.StatusNotFound, "no such repository path: %s (berth serves %s<app>.git, e.g. git remote add berth http://HOST:7070%shello.git)", r.URL.Path, Prefix, Prefix)
		return
	}
	app, op := m[1], m[2]
	if err := api.ValidAppName("app", app); err != nil {
		httpError(w, http.StatusNotFound, "%v", err)
		return
	}
	push := op == "git-receive-pack" || r.URL.Query().Get("service") == "git-receive-pack"
	switch {
	case op == "info/refs" && r.Method != http.MethodGet && r.Method != http.MethodHead,
		op != "info/refs" && r.Method != http.MethodPost:
		httpError(w, http.StatusMethodNotAllowed, "%s %s: method not allowed", r.Method, r.URL.Path)
		return
	case op == "info/refs" && !push && r.URL.Query().Get("service") != "git-upload-pack":
		httpError(w, http.StatusForbidden, "berth serves git's smart HTTP protocol only (git 1.6.6 or later)")
		return
	}
	token, ok := s.allowed(w, r)
	if !ok {
		return
	}
	dir := filepath.Join(s.Root, app+".git")
	if push {
		if err := s.ensureRepo(r.Context(), dir); err != nil {
			s.Log.Error("make git repository", "app", app, "err", err)
			httpError(w, http.StatusInternalServerError, "make the repository of %s: %v", app, err)
			return
		}
	} else if _, err := os.Stat(filepath.Join(dir, "HEAD")); err != nil {
		httpError(w, http.StatusNotFound, "app %s has no git repository yet: push to it first (git push berth main)", app)
		return
	}
	if s.MaxPush > 0 {
		r.Body = http.MaxBytesReader(w, r.Body, s.MaxPush)
	}
	if r.ContentLength < 0 && r.Method == http.MethodPost {
		spooled, err := s.spool(r)
		if err != nil {
			code := http.StatusBadRequest
			if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
				code = http.StatusRequestEntityTooLarge
			}
			httpError(w, code, "read the push: %v", err)
			return
		}
		defer spooled.Close()
	}
	s.backend(w, r, dir, append(s.backendEnv(), s.HookEnv(app, token)...))
}

// spool writes a chunked body (git sends packs over 1 MiB so) to a file
// and makes it the request's body with its length: CGI needs the length.
func (s *Server) spool(r *http.Request) (io.Closer, error) {
	f, err := os.CreateTemp(s.Root, "push-*.pack")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name()) // gone with the last close, a crash included
	n, err := io.Copy(f, r.Body)
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	r.Body, r.ContentLength, r.TransferEncoding = f, n, nil
	return f, nil
}

// allowed checks the request's token: a user token may push and fetch.
// No token or a wrong one gets a Basic challenge, to which git answers
// with its credentials (any user name, the token as the password).
func (s *Server) allowed(w http.ResponseWriter, r *http.Request) (string, bool) {
	token := credential(r)
	if token == "" {
		w.Header().Set("WWW-Authenticate", `Basic realm="berth"`)
		httpError(w, http.StatusUnauthorized, "authentication required: a berth user token is the password (any user name)")
		return "", false
	}
	role, err := s.Authorize(r.Context(), token)
	switch {
	case err != nil:
		httpError(w, http.StatusServiceUnavailable, "checking the token: %v", err)
	case role == "":
		w.Header().Set("WWW-Authenticate", `Basic realm="berth"`)
		httpError(w, http.StatusUnauthorized, "wrong or removed berth token")
	case role != api.RoleUser:
		httpError(w, http.StatusForbidden, "a %s token may not use git repositories; push with a user token", role)
	default:
		return token, true
	}
	return "", false
}

// backendEnv configures git for every request through the environment,
// so that the repositories hold no configuration of their own: pushes
// over HTTP are allowed, the hook is berth's, push options reach it.
func (s *Server) backendEnv() []string {
	cfg := [][2]string{
		{"http.receivepack", "true"},
		{"http.getanyfile", "false"},
		{"http.uploadpack", "true"},
		{"receive.advertisePushOptions", "true"},
		{"core.hooksPath", filepath.Join(s.Root, "hooks")},
		{"safe.directory", "*"},
	}
	env := []string{
		"GIT_PROJECT_ROOT=" + s.Root,
		"GIT_HTTP_EXPORT_ALL=1",
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + s.Root, // no user's ~/.gitconfig
		"GIT_CONFIG_NOSYSTEM=1",
		fmt.Sprintf("GIT_CONFIG_COUNT=%d", len(cfg)),
	}
	for i, kv := range cfg {
		env = append(env, fmt.Sprintf("GIT_CONFIG_KEY_%d=%s", i, kv[0]), fmt.Sprintf("GIT_CONFIG_VALUE_%d=%s", i, kv[1]))
	}
	return env
}

// ensureRepo makes the bare repository and (re)writes the hook, which
// names the current binary.
func (s *Server) ensureRepo(ctx context.Context, dir string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writeHook(); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, "HEAD")); err == nil {
		return nil
	}
	tmp := dir + ".new"
	os.RemoveAll(tmp) // a half-made one of a crash
	out, err := exec.CommandContext(ctx, gitPath(), "init", "--quiet", "--bare", "--initial-branch=main", tmp).CombinedOutput()
	if err != nil {
		return fmt.Errorf("git init: %v: %s", err, strings.TrimSpace(string(out)))
	}
	// The sample hooks are noise: the hooks are berth's (core.hooksPath).
	os.RemoveAll(filepath.Join(tmp, "hooks"))
	return os.Rename(tmp, dir)
}

func (s *Server) writeHook() error {
	if len(s.Hook) == 0 {
		return errors.New("no pre-receive hook configured")
	}
	var b strings.Builder
	b.WriteString("#!/bin/sh\n# Written by berth at every push: builds and deploys what is pushed.\nexec")
	for _, a := range s.Hook {
		b.WriteString(" '" + strings.ReplaceAll(a, "'", `'\''`) + "'")
	}
	b.WriteString("\n")
	dir := filepath.Join(s.Root, "hooks")
	path := filepath.Join(dir, "pre-receive")
	if old, err := os.ReadFile(path); err == nil && string(old) == b.String() {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o700); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// gitPath is git, found on PATH (Debian: /usr/bin/git).
func gitPath() string {
	if p, err := exec.LookPath("git"); err == nil {
		return p
	}
	return "git"
}

// Available says why git pushes cannot work here, or nil.
func Available() error {
	if _, err := exec.LookPath("git"); err != nil {
		return errors.New("git is not installed (Debian: apt-get install git): git push to berth is off")
	}
	return nil
}

// credential is the token a request carries: the password of Basic auth
// (git's way) or a Bearer token.
func credential(r *http.Request) string {
	if _, pass, ok := r.BasicAuth(); ok {
		return pass
	}
	if scheme, rest, _ := strings.Cut(r.Header.Get("Authorization"), " "); strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(rest)
	}
	return ""
}

// httpError answers in text/plain, which git shows to the user as
// "remote:" lines.
func httpError(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	fmt.Fprintf(w, format+"\n", args...)
}

// flushWriter sends each write at once: a push's progress (the hook's
// output) must reach the pusher as it comes, not when the push ends.
type flushWriter struct{ http.ResponseWriter }

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.ResponseWriter.Write(p)
	if fl, ok := f.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
	return n, err
}

type logWriter struct{ log *slog.Logger }

func (l logWriter) Write(p []byte) (int, error) {
	if msg := strings.TrimSpace(string(p)); msg != "" {
		l.log.Warn("git http-backend", "stderr", msg)
	}
	return len(p), nil
}
