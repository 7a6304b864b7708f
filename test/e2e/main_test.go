package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"berth/internal/testenv"
)

// Images the tests run; scripts/build-images.sh builds them.
const (
	imageDemo1   = "berth/demo:1"
	imageDemo2   = "berth/demo:2"
	imageBusybox = "berth/busybox:1"
)

var (
	// berthBin is the binary TestMain built from cmd/berth.
	berthBin string
	// repoRoot is the module root, found from this file's location.
	repoRoot string
	// skipReason, when set, makes every test skip (no Docker engine outside CI).
	skipReason string
)

// needDocker stops a test that cannot run without the Docker engine:
// outside CI it skips; under CI=true it fails (runMain already refuses to
// run without an engine there; this keeps every test to the same rule).
func needDocker(t testing.TB) {
	t.Helper()
	if skipReason == "" {
		return
	}
	testenv.Missing(t, skipReason)
}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		fmt.Fprintln(os.Stderr, "e2e: cannot find the test file's path")
		return 1
	}
	repoRoot = filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))

	if out, err := dockerCLI(10*time.Second, "info", "--format", "{{.ServerVersion}}"); err != nil {
		why := fmt.Sprintf("no Docker engine answers (`docker info`: %v: %s); start one with scripts/docker-up.sh", err, strings.TrimSpace(out))
		if os.Getenv("CI") == "true" {
			fmt.Fprintln(os.Stderr, "e2e: FAIL:", why)
			return 1
		}
		fmt.Fprintln(os.Stderr, "e2e: skipping every test:", why)
		skipReason = why
		return m.Run()
	}

	var missing []string
	for _, image := range []string{imageDemo1, imageDemo2, imageBusybox} {
		if _, err := dockerCLI(30*time.Second, "image", "inspect", "--format", "{{.Id}}", image); err != nil {
			missing = append(missing, image)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: images missing: %s; build them with scripts/build-images.sh --if-missing\n", strings.Join(missing, ", "))
		return 1
	}

	dir, err := os.MkdirTemp("", "berth-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	berthBin = filepath.Join(dir, "berth")
	start := time.Now()
	build := exec.Command("go", "build", "-o", berthBin, "./cmd/berth")
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: go build ./cmd/berth in %s: %v\n%s", repoRoot, err, out)
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: built %s in %s\n", berthBin, time.Since(start).Round(time.Millisecond))
	return m.Run()
}

// dockerCLI runs the docker CLI and returns its combined output.
func dockerCLI(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	return string(out), err
}
