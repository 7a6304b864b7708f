package gitserve

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"berth/api"
	"berth/internal/testenv"
)

func testServer(t *testing.T) *Server {
	if err := Available(); err != nil {
		testenv.Missing(t, err.Error())
	}
	return &Server{
		Root: t.TempDir(),
		Authorize: func(_ context.Context, token string) (string, error) {
			return map[string]string{"u": api.RoleUser, "a": api.RoleAgent}[token], nil
		},
		Hook:    []string{"/bin/true"},
		HookEnv: func(app, token string) []string { return nil },
		Log:     slog.New(slog.DiscardHandler),
	}
}

// The edge: paths, methods, the dumb protocol and tokens are checked
// before git runs, and only a push makes a repository.
func TestRefusals(t *testing.T) {
	s := testServer(t)
	for _, c := range []struct {
		method, path, token string
		code                int
		want                string
	}{
		{"GET", "/git/web.git/info/refs?service=git-receive-pack", "", 401, "authentication required"},
		{"GET", "/git/web.git/info/refs?service=git-receive-pack", "x", 401, "wrong or removed"},
		{"GET", "/git/web.git/info/refs?service=git-receive-pack", "a", 403, "a agent token may not"},
		{"GET", "/git/web.git/info/refs", "u", 403, "smart HTTP protocol only"},
		{"GET", "/git/web.git/HEAD", "u", 404, "no such repository path"},
		{"GET", "/git/web.git/objects/info/packs", "u", 404, "no such repository path"},
		{"GET", "/git/../etc.git/info/refs?service=git-upload-pack", "u", 404, ""},
		{"GET", "/git/Web.git/info/refs?service=git-upload-pack", "u", 404, "not a DNS label"},
		{"POST", "/git/web.git/info/refs?service=git-upload-pack", "u", 405, "method not allowed"},
		{"GET", "/git/web.git/git-receive-pack", "u", 405, "method not allowed"},
		{"GET", "/git/web.git/info/refs?service=git-upload-pack", "u", 404, "no git repository yet"},
	} {
		req := httptest.NewRequest(c.method, c.path, nil)
		if c.token != "" {
			req.SetBasicAuth("berth", c.token)
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		body, _ := io.ReadAll(w.Body)
		if w.Code != c.code || !strings.Contains(string(body), c.want) {
			t.Errorf("%s %s (token %q): %d %q; want %d with %q", c.method, c.path, c.token, w.Code, body, c.code, c.want)
		}
		if c.code == 401 && w.Header().Get("WWW-Authenticate") != `Basic realm="berth"` {
			t.Errorf("%s %s: a 401 without the Basic challenge git answers", c.method, c.path)
		}
	}
	if entries, _ := os.ReadDir(s.Root); len(entries) != 0 {
		t.Errorf("refused requests left %d entries in the root", len(entries))
	}
}

// The first push's ref advertisement makes the bare repository and the
// hook; git http-backend answers it.
func TestPushAdvertisement(t *testing.T) {
	s := testServer(t)
	req := httptest.NewRequest("GET", "/git/web.git/info/refs?service=git-receive-pack", nil)
	req.SetBasicAuth("berth", "u")
	w := httptest.NewRecorder()
	s.ServeHTTP(w, req)
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/x-git-receive-pack-advertisement" {
		t.Fatalf("receive-pack advertisement: %d %s %q", w.Code, w.Header().Get("Content-Type"), w.Body.String())
	}
	if !strings.Contains(w.Body.String(), "report-status") || !strings.Contains(w.Body.String(), "push-options") {
		t.Errorf("the advertisement lacks report-status or push-options: %q", w.Body.String())
	}
	if _, err := os.Stat(filepath.Join(s.Root, "web.git", "HEAD")); err != nil {
		t.Errorf("no bare repository: %v", err)
	}
	hook, err := os.ReadFile(filepath.Join(s.Root, "hooks", "pre-receive"))
	if err != nil || !strings.Contains(string(hook), "exec '/bin/true'") {
		t.Errorf("the hook: %q %v", hook, err)
	}
}
