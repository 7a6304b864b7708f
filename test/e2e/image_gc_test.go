package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Garbage collection end to end: of two images pushed into berth's
// registry, the one not deployed is deleted once the grace is over and
// the deployed one still pulls; the collection is an image-gc event. Once
// the app is removed, its image goes from the registry too, and the agent
// removes the copy it pulled through its cache, leaving local images be.
func TestImageGarbageCollection(t *testing.T) {
	needDocker(t)
	c := startServers(t, 1)
	s := c.list[0]
	// Again with a short grace and interval (its data dir, and so its store, kept).
	s.stop(t)
	s.args = append(s.args, "--image-gc-grace", "15s", "--image-gc-interval", "1s")
	s.start(t)
	api := c.api(t)
	waitFor(t, 60*time.Second, func() (bool, string) {
		code, _, err := api.rawRequest("GET", "/healthz", nil, "", "")
		return err == nil && code == 200, fmt.Sprintf("GET /healthz: %d %v", code, err)
	})
	c.startAgentWith(t, "n1", []string{"--image-retention", "2s"})

	repo := "e2e-" + c.cluster[:8] + "/gc"
	config := t.TempDir()
	if out, err := dockerWith(t, config, "login", s.addr, "-u", "berth", "-p", c.token); err != nil {
		t.Fatalf("docker login: %v: %s", err, out)
	}
	// Built first, so that the deployed one is pushed just before its deploy.
	keptRef, goneRef := s.addr+"/"+repo+":deployed", s.addr+"/"+repo+":unused"
	gcBuildImage(t, goneRef)
	gcBuildImage(t, keptRef)
	gone := gcPushImage(t, config, goneRef)
	kept := gcPushImage(t, config, keptRef)
	if r := c.deployCLI(t, demoSpec("gc", repo+":deployed", 1)); r.code != 0 {
		t.Fatalf("deploy:\n%s", r)
	}
	var app appRecord
	api.getJSON(t, "/v1/apps/gc", &app)
	if app.ImageDigest != kept {
		t.Fatalf("the app is pinned to %q; want the pushed %s", app.ImageDigest, kept)
	}
	waitFor(t, 60*time.Second, func() (bool, string) {
		insts := api.instances(t, "gc")
		return countRoutable(insts) == 1, describe(insts)
	})

	// The unused image goes once its grace is over; the deployed one stays.
	waitFor(t, 30*time.Second, func() (bool, string) {
		code := gcManifestStatus(t, api, repo, "unused")
		return code == 404, fmt.Sprintf("%s:unused answers %d", repo, code)
	})
	if code := gcManifestStatus(t, api, repo, gone); code != 404 {
		t.Errorf("%s@%s (collected) answers %d; want 404", repo, gone, code)
	}
	for _, ref := range []string{"deployed", kept} {
		if code := gcManifestStatus(t, api, repo, ref); code != 200 {
			t.Errorf("%s:%s (deployed) answers %d after the collection; want 200", repo, ref, code)
		}
	}
	local := s.addr + "/" + repo + "@" + kept
	t.Cleanup(func() { _, _ = dockerCLI(30*time.Second, "rmi", "-f", local) })
	if out, err := dockerWith(t, config, "pull", local); err != nil {
		t.Errorf("docker pull of the deployed image after the collection: %v: %s", err, out)
	}
	// Only that name goes: with it, the agent's copy would have a name
	// that is not its cache's, and the agent would rightly leave it be.
	if out, err := dockerCLI(30*time.Second, "rmi", local); err != nil {
		t.Fatalf("docker rmi %s: %v: %s", local, err, out)
	}
	var gcEvent string
	for _, e := range api.events(t, "") {
		if e.Kind == "image-gc" {
			gcEvent = e.Message
		}
	}
	if !strings.Contains(gcEvent, "1 manifest, ") || !strings.Contains(gcEvent, "read-only") || !strings.Contains(gcEvent, s.addr) {
		t.Errorf("image-gc event %q; want one naming 1 manifest, the read-only window and the server", gcEvent)
	}
	t.Logf("image-gc event: %s", gcEvent)

	// The agent's copy: 127.0.0.1:<cache>/<repo>@<digest>.
	ctrs := containers(t, c.cluster, "berth.app=gc")
	if len(ctrs) != 1 {
		t.Fatalf("containers of gc: %s", describeContainers(ctrs))
	}
	pulled := strings.TrimSpace(dockerInspect(t, ctrs[0].ID, "{{.Config.Image}}"))
	if !strings.HasPrefix(pulled, "127.0.0.1:") || !strings.HasSuffix(pulled, "/"+repo+"@"+kept) {
		t.Fatalf("the instance runs %q; want the agent's cache's copy", pulled)
	}
	t.Cleanup(func() { _, _ = dockerCLI(30*time.Second, "rmi", "-f", pulled) })
	if r := c.cli(t, "rm", "gc"); r.code != 0 {
		t.Fatalf("berth rm gc:\n%s", r)
	}
	waitFor(t, 30*time.Second, func() (bool, string) {
		_, err := dockerCLI(10*time.Second, "image", "inspect", pulled)
		return err != nil, "the agent's copy " + pulled + " is still on the engine"
	})
	if _, err := dockerCLI(10*time.Second, "image", "inspect", imageDemo1); err != nil {
		t.Errorf("local image %s gone: %v", imageDemo1, err)
	}
	waitFor(t, 30*time.Second, func() (bool, string) {
		code := gcManifestStatus(t, api, repo, kept)
		return code == 404, fmt.Sprintf("the removed app's image answers %d", code)
	})
}

// gcBuildImage builds ref: the demo image and a file of its own.
func gcBuildImage(t *testing.T, ref string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nonce"), []byte(randomToken(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM "+imageDemo1+"\nCOPY nonce /nonce\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = dockerCLI(30*time.Second, "rmi", "-f", ref) })
	if out, err := dockerCLI(2*time.Minute, "build", "-q", "-t", ref, dir); err != nil {
		t.Fatalf("docker build: %v: %s", err, out)
	}
}

// gcPushImage pushes ref, drops it from the engine and returns its
// manifest digest.
func gcPushImage(t *testing.T, config, ref string) string {
	t.Helper()
	out, err := dockerWith(t, config, "push", ref)
	if err != nil {
		t.Fatalf("docker push %s: %v: %s", ref, err, out)
	}
	_, _ = dockerCLI(30*time.Second, "rmi", ref)
	// The last line: "<tag>: digest: sha256:... size: N".
	i := strings.LastIndex(out, "digest: ")
	if i < 0 {
		t.Fatalf("docker push printed no digest: %s", out)
	}
	return strings.Fields(out[i+len("digest: "):])[0]
}

// gcManifestStatus is the registry's answer to a pull of repo's manifest ref.
func gcManifestStatus(t *testing.T, b *berth, repo, ref string) int {
	t.Helper()
	req, err := http.NewRequest("HEAD", "http://"+b.addr+"/v2/"+repo+"/manifests/"+ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+b.token)
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
