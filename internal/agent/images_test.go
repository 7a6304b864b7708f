package agent

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"berth/internal/runtime"
	"berth/internal/runtime/fake"
)

const cachePrefix = "127.0.0.1:7071"

func imageRefs(t *testing.T, rt *fake.Runtime) []string {
	t.Helper()
	imgs, err := rt.ListImages(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, img := range imgs {
		out = append(out, img.ID)
	}
	slices.Sort(out)
	return out
}

// Only images pulled through this agent's cache that no container has
// used for the retention go; local images, images with a name of their
// own, another cache's and images in use (a stopped container's too) stay.
func TestCleanImages(t *testing.T) {
	rt := fake.New()
	rt.SetImageList(
		runtime.Image{ID: "unused", Refs: []string{cachePrefix + "/app@sha256:1"}},
		runtime.Image{ID: "stopped", Refs: []string{cachePrefix + "/app@sha256:2"}},
		runtime.Image{ID: "local", Refs: []string{"berth/demo:1"}},
		runtime.Image{ID: "tagged", Refs: []string{cachePrefix + "/app@sha256:3", "mine:1"}},
		runtime.Image{ID: "other-cache", Refs: []string{"127.0.0.1:9999/app@sha256:4"}},
		runtime.Image{ID: "dangling"},
		runtime.Image{ID: "created", Refs: []string{cachePrefix + "/app@sha256:5"}},
	)
	ctx := context.Background()
	id, err := rt.Create(ctx, runtime.ContainerSpec{Name: "idle", Image: cachePrefix + "/app@sha256:2"})
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	a := &Agent{Runtime: rt, PullCache: cachePrefix, ImageRetention: time.Hour, Log: slog.New(slog.NewTextHandler(&logs, nil))}
	base := time.Now()
	all := imageRefs(t, rt)
	// First sight counts as use: nothing goes, however old.
	if err := a.cleanImagesOnce(ctx, base.Add(-2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := imageRefs(t, rt); !slices.Equal(got, all) {
		t.Fatalf("first pass removed images: %v left of %v", got, all)
	}
	if err := a.cleanImagesOnce(ctx, base.Add(-90*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if got := imageRefs(t, rt); !slices.Equal(got, all) {
		t.Fatalf("within the retention: %v left of %v", got, all)
	}
	a.useImage(cachePrefix + "/app@sha256:5") // a container is about to be made from it
	if err := a.cleanImagesOnce(ctx, base.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	want := []string{"created", "dangling", "local", "other-cache", "stopped", "tagged"}
	if got := imageRefs(t, rt); !slices.Equal(got, want) {
		t.Fatalf("after the retention: %v, want %v", got, want)
	}
	if !strings.Contains(logs.String(), "removed unused image") || !strings.Contains(logs.String(), cachePrefix+"/app@sha256:1") {
		t.Errorf("no removal logged: %s", logs.String())
	}
	// The idle instance's container goes: its image's clock starts then.
	if err := rt.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := a.cleanImagesOnce(ctx, base.Add(30*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if got := imageRefs(t, rt); !slices.Contains(got, "stopped") {
		t.Fatalf("an image removed as soon as its container went: %v", got)
	}
	if err := a.cleanImagesOnce(ctx, base.Add(3*time.Hour)); err != nil {
		t.Fatal(err)
	}
	want = []string{"dangling", "local", "other-cache", "tagged"}
	if got := imageRefs(t, rt); !slices.Equal(got, want) {
		t.Fatalf("an hour after the container went: %v, want %v", got, want)
	}
}

// An image a container uses is never removed, even when the agent's own
// record says otherwise (a container someone else made meanwhile).
func TestStaleImages(t *testing.T) {
	now := time.Now()
	last := map[string]time.Time{"a": now.Add(-2 * time.Hour), "b": now.Add(-2 * time.Hour), "gone": now.Add(-2 * time.Hour), "new-ref": now}
	imgs := []runtime.Image{
		{ID: "a", Refs: []string{cachePrefix + "/a@sha256:1"}},
		{ID: "b", Refs: []string{cachePrefix + "/b@sha256:1"}, Containers: 1},
	}
	got := staleImages(imgs, cachePrefix+"/", last, now, time.Hour)
	if len(got) != 1 || got[0].ID != "a" {
		t.Errorf("stale = %v, want a", got)
	}
	if !last["b"].Equal(now) {
		t.Errorf("an image in use not marked used now: %v", last["b"])
	}
	if _, ok := last["gone"]; ok {
		t.Error("an old entry of an image gone is kept")
	}
	if _, ok := last["new-ref"]; !ok {
		t.Error("a reference just used (not pulled yet) is forgotten")
	}
}
