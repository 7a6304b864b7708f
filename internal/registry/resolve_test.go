package registry

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"berth/api"
)

// A tag resolves to the digest of its manifest; a missing tag and a
// missing repository say which.
func TestResolve(t *testing.T) {
	reg, err := New(Config{Dir: t.TempDir(), Authorize: tokens})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	mux := http.NewServeMux()
	mux.Handle("/v2/", reg)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	_, manifest := pushImage(t, srv.URL, "team/hello", "abc123", "bearer:"+userToken)

	ctx := context.Background()
	for _, c := range []struct {
		name, tag, digest string
		err               error
	}{
		{"team/hello", "abc123", manifest, nil},
		{"team/hello", "nosuch", "", api.ErrNoTag},
		{"team/nosuch", "abc123", "", api.ErrNoRepository},
	} {
		d, err := reg.Resolve(ctx, c.name, c.tag)
		if d != c.digest || !errors.Is(err, c.err) || (c.err == nil) != (err == nil) {
			t.Errorf("Resolve(%s, %s) = %q, %v; want %q, %v", c.name, c.tag, d, err, c.digest, c.err)
		}
	}
}
