package api

import "testing"

func TestRegistryImage(t *testing.T) {
	for _, c := range []struct {
		ref, repo, tag string
		ok             bool
	}{
		{"hello", "hello", "latest", true},
		{"hello:0a1b2c3", "hello", "0a1b2c3", true},
		{"team/hello:1", "team/hello", "1", true},
		{"berth/demo:1", "berth/demo", "1", true},
		{"example.org/hello:1", "", "", false},
		{"127.0.0.1:7070/hello:1", "", "", false},
		{"localhost/hello", "", "", false},
		{"hello@sha256:" + sha64, "", "", false},
		{"", "", "", false},
	} {
		repo, tag, ok := RegistryImage(c.ref)
		if repo != c.repo || tag != c.tag || ok != c.ok {
			t.Errorf("RegistryImage(%q) = %q, %q, %v; want %q, %q, %v", c.ref, repo, tag, ok, c.repo, c.tag, c.ok)
		}
	}
	if got := PinnedImage("127.0.0.1:7071", "team/hello:1", "sha256:"+sha64); got != "127.0.0.1:7071/team/hello@sha256:"+sha64 {
		t.Errorf("PinnedImage = %q", got)
	}
	if got := PinnedImage("127.0.0.1:7071", "berth/demo:1", ""); got != "berth/demo:1" {
		t.Errorf("PinnedImage without a digest = %q, want the reference as written", got)
	}
}

const sha64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
