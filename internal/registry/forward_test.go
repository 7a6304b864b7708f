package registry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The requests the collection's read-only window guards go to the
// leader; everything else, and anything already forwarded, is served here.
func TestForwardGuarded(t *testing.T) {
	var atLeader []string
	leaderSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		atLeader = append(atLeader, r.Method+" "+r.URL.RequestURI()+" fwd="+r.Header.Get(forwardedHeader)+" auth="+r.Header.Get("Authorization"))
		w.Header().Set("Location", "/v2/app/manifests/sha256:x")
		w.WriteHeader(http.StatusCreated)
	}))
	defer leaderSrv.Close()
	var here []string
	local := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { here = append(here, r.Method+" "+r.URL.Path) })
	leader := leaderSrv.URL
	h := ForwardGuarded(local, func(context.Context) (string, error) { return leader, nil })

	do := func(method, path string, hdr ...string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, strings.NewReader("{}"))
		req.Header.Set("Authorization", "Bearer tok")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w
	}
	if w := do("PUT", "/v2/app/manifests/1"); w.Code != http.StatusCreated || w.Header().Get("Location") != "/v2/app/manifests/sha256:x" {
		t.Errorf("forwarded manifest put: %d %v", w.Code, w.Header())
	}
	do("DELETE", "/v2/app/blobs/sha256:aa")
	do("POST", "/v2/app/blobs/uploads/?mount=sha256:aa&from=other")
	do("GET", "/v2/app/manifests/1")
	do("PATCH", "/v2/app/blobs/uploads/u1")
	do("POST", "/v2/app/blobs/uploads/")
	do("PUT", "/v2/app/manifests/2", forwardedHeader, "1")
	want := []string{
		"PUT /v2/app/manifests/1 fwd=1 auth=Bearer tok",
		"DELETE /v2/app/blobs/sha256:aa fwd=1 auth=Bearer tok",
		"POST /v2/app/blobs/uploads/?mount=sha256:aa&from=other fwd=1 auth=Bearer tok",
	}
	if strings.Join(atLeader, "\n") != strings.Join(want, "\n") {
		t.Errorf("at the leader:\n%s\nwant:\n%s", strings.Join(atLeader, "\n"), strings.Join(want, "\n"))
	}
	if got := strings.Join(here, ", "); got != "GET /v2/app/manifests/1, PATCH /v2/app/blobs/uploads/u1, POST /v2/app/blobs/uploads/, PUT /v2/app/manifests/2" {
		t.Errorf("served here: %s", got)
	}

	// This server leads (""): served here. The leader down: 503, retry.
	leader = ""
	here = nil
	do("PUT", "/v2/app/manifests/3")
	if len(here) != 1 {
		t.Errorf("with this server leading, the put went elsewhere: %v", here)
	}
	leader = "http://127.0.0.1:1"
	w := do("PUT", "/v2/app/manifests/4")
	body, _ := io.ReadAll(w.Body)
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") != "1" || !strings.Contains(string(body), "UNAVAILABLE") {
		t.Errorf("the leader unreachable: %d %v %s", w.Code, w.Header(), body)
	}
}
