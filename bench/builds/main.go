// Command builds benchmarks berth's builds in one run on this machine, on
// loopback only, against the floor of doing the same by hand with the
// Docker CLI:
//
//   - Build: `berth build APP DIR` of a git work tree (the demo binary, an
//     asset of -asset MiB of random bytes and a file of -fresh MiB of
//     random bytes, new before each build and committed, so that a layer
//     is rebuilt and new bytes go up on each side) into berth's registry,
//     against `docker build` + `docker push` of the same directory into the
//     same registry (after docker login with the token).
//   - Commit to serving: an app of 3 replicas behind a route (examples/
//     hello.yaml, deployed first with berth/demo:1); each round commits a
//     new fresh file and times `git push berth main` until the 3 instances
//     of the new revision answer through the gateway, with the phases read
//     off the push's "remote:" lines as they arrive. The floor: docker
//     build, then docker run of the same context until GET /healthz
//     answers (one container, no registry).
//
// The two sides alternate round by round (-rounds, medians reported);
// both sides get one untimed warm-up first, so that every timed build
// starts from the same caches: the layers of the demo binary and the
// asset in the engine's build cache and in the registry.
//
// bench/run.sh (make bench) builds berth and runs it:
//
//	go run ./bench/builds [-berth path/to/berth] [-out bench/builds-results.txt] [-rounds 3] [-asset 20] [-fresh 4] [-keep]
//
// Run it from the repository root (it compiles ./examples/demo and reads
// examples/hello.yaml). It needs git and the berth/demo:1 image
// (scripts/build-images.sh). A build that stays queued for 2 minutes
// stops the run, with what the server says of the build and the node; a
// failed commit-to-serving comparison still reports the build's figures
// (and exits 1). The bench's berth up is stopped with SIGTERM at the end,
// then what still runs in its dir (git hooks of a push cut short), its
// cluster's containers and the floor's are removed, so are the images
// both sides built and the temporary dir (unless -keep), also after a
// failure or Ctrl-C.
package main

import (
	"berth/bench/internal/measure"

	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"berth/bench/internal/berthup"
)

var (
	berthBin = flag.String("berth", "", "berth binary (default: go build ./cmd/berth into the temporary dir)")
	out      = flag.String("out", "", "write the results here too (run.sh: bench/builds-results.txt)")
	rounds   = flag.Int("rounds", 3, "rounds of each comparison, the sides alternating (medians)")
	assetMiB = flag.Int("asset", 20, "MiB of random bytes of the context's asset (a layer of its own, cached)")
	freshMiB = flag.Int("fresh", 4, "MiB of new random bytes committed before each build (the layer rebuilt and uploaded)")
	keep     = flag.Bool("keep", false, "keep the temporary dir (berth's log and data, the git repositories)")
)

const (
	// timeout bounds the whole run.
	timeout   = 25 * time.Minute
	baseImage = "berth/demo:1"
	buildApp  = "buildbench" // the repository of the build comparison
	specFile  = "examples/hello.yaml"
	floorRepo = "berth-bench-builds/serve-floor" // the floor's images of the serving comparison
	// floorLabel marks the floor's containers (value: the run's id).
	floorLabel = "berth-bench.builds"
)

func main() {
	flag.Parse()
	os.Exit(run())
}

type bench struct {
	tmp     string
	runID   string
	berth   *berthup.Up
	cluster string
	config  string   // docker CLI config dir with the login to berth's registry
	env     []string // of berth up and of the commands the bench runs: TMPDIR in tmp
	demoBin string   // the static demo binary
	asset   string   // the asset's random bytes, copied into each repository

	mu     sync.Mutex
	images []string // image ids and tags the run made, in order
}

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	b := &bench{runID: fmt.Sprintf("%d", time.Now().UnixNano())}
	defer b.cleanup()
	r, err := b.run(ctx)
	if err != nil && ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		fmt.Fprintln(os.Stderr, "bench builds: interrupted; cleaning up")
		return 1
	}
	code := 0
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench builds: FAILED:", err)
		if b.berth != nil {
			fmt.Fprintf(os.Stderr, "bench builds: berth's log: %s (kept with -keep)\n", b.berth.LogPath)
		}
		if r == nil {
			return 1
		}
		code = 1 // a report of what was measured, and of what failed
	}
	r.wall = time.Since(start)
	text := r.render()
	fmt.Print("\n" + text)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(text), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench builds:", err)
			return 1
		}
		fmt.Printf("written to %s\n", *out)
	}
	return code
}

func (b *bench) run(ctx context.Context) (*report, error) {
	var err error
	if *rounds < 1 || *assetMiB < 0 || *freshMiB < 1 {
		return nil, fmt.Errorf("-rounds and -fresh must be at least 1, -asset not negative")
	}
	if b.tmp, err = os.MkdirTemp("", "berth-builds-bench-"); err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("git"); err != nil {
		return nil, fmt.Errorf("git is not installed (scripts/docker-up.sh installs it): %w", err)
	}
	if _, err := dockerCLI(ctx, "image", "inspect", "--format", "{{.Id}}", baseImage); err != nil {
		return nil, fmt.Errorf("%s is missing: run ./scripts/build-images.sh: %w", baseImage, err)
	}
	spec, err := readSpec(specFile)
	if err != nil {
		return nil, err
	}
	bin := *berthBin
	if bin == "" {
		bin = filepath.Join(b.tmp, "berth")
		logf("building berth")
		if err := goBuild(ctx, bin, "./cmd/berth"); err != nil {
			return nil, err
		}
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return nil, err
	}
	b.demoBin = filepath.Join(b.tmp, "demo")
	if err := goBuild(ctx, b.demoBin, "./examples/demo"); err != nil {
		return nil, err
	}
	b.asset = filepath.Join(b.tmp, "asset.bin")
	if err := randomFile(b.asset, *assetMiB); err != nil {
		return nil, err
	}
	// Temporary files of berth's (build contexts, of the CLI's and of the
	// git hooks') go into the bench's dir: a command stopped before its
	// end leaves its file there, not in /tmp.
	tmpdir := filepath.Join(b.tmp, "tmp")
	if err := os.MkdirAll(tmpdir, 0o700); err != nil {
		return nil, err
	}
	b.env = append(os.Environ(), "TMPDIR="+tmpdir)
	if b.berth, err = berthup.StartEnv(ctx, bin, b.tmp, b.env, logf); err != nil {
		return nil, err
	}
	st, err := b.berth.Client().Status(ctx)
	if err != nil {
		return nil, err
	}
	b.cluster = st.Cluster
	logf("berth up answers: cluster %s, gateway on %s", b.cluster, b.berth.GatewayAddr)
	b.config = filepath.Join(b.tmp, "docker-config")
	if _, err := dockerCLI(ctx, "--config", b.config, "login", b.berth.Addr, "-u", "berth", "-p", b.berth.Token); err != nil {
		return nil, err
	}
	r := &report{assetMiB: *assetMiB, freshMiB: *freshMiB, spec: spec}
	if r.build, err = b.builds(ctx); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	if r.serve, err = b.serving(ctx, spec); err != nil {
		// The build's figures stand: the report says what failed.
		r.serveErr = err
		return r, fmt.Errorf("commit to serving: %w", err)
	}
	return r, nil
}

// goBuild compiles pkg (of this module: run from its root) into out, a
// static linux binary.
func goBuild(ctx context.Context, out, pkg string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s (run the bench from the repository root): %v: %s", pkg, err, strings.TrimSpace(string(o)))
	}
	return nil
}

// randomFile writes n MiB of random bytes to path.
func randomFile(path string, n int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for range n {
		rand.Read(buf)
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// madeImage notes an image (id or tag) the run made, for the cleanup.
func (b *bench) madeImage(refs ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range refs {
		if r != "" && !slices.Contains(b.images, r) {
			b.images = append(b.images, r)
		}
	}
}

// cleanup removes what the bench made, whatever happened: berth up
// (SIGTERM), the containers of its cluster and the floor's, the images
// both sides built (and the engine pulled for berth's instances), the
// temporary dir.
func (b *bench) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b.berth.Stop()
	b.stopStrays()
	filters := []string{"label=" + floorLabel + "=" + b.runID}
	if b.cluster != "" {
		filters = append(filters, "label=berth.cluster="+b.cluster)
	}
	for _, f := range filters {
		out, err := dockerCLI(ctx, "ps", "-aq", "--filter", f)
		if err != nil {
			logf("cleanup: %v", err)
			continue
		}
		ids := strings.Fields(out)
		if len(ids) == 0 {
			continue
		}
		// The images they run: berth's instances run what the engine
		// pulled from berth's registry (or its pull cache), by digest.
		if imgs, err := dockerCLI(ctx, append([]string{"inspect", "--format", "{{.Image}}"}, ids...)...); err == nil {
			for _, id := range strings.Fields(imgs) {
				if !b.isBase(ctx, id) {
					b.madeImage(id)
				}
			}
		}
		if _, err := dockerCLI(ctx, append([]string{"rm", "-f"}, ids...)...); err != nil {
			logf("cleanup: %v", err)
		} else {
			logf("cleanup: removed %d containers (%s)", len(ids), f)
		}
	}
	// Newest first: a build's image before the one it was built on.
	removed := 0
	for _, ref := range slices.Backward(b.images) {
		if _, err := dockerCLI(ctx, "rmi", "-f", ref); err != nil {
			if !strings.Contains(err.Error(), "No such image") {
				logf("cleanup: %v", err)
			}
			continue
		}
		removed++
	}
	if len(b.images) > 0 {
		logf("cleanup: removed %d of the %d images the run made (the rest went with them)", removed, len(b.images))
	}
	if b.tmp == "" {
		return
	}
	if *keep {
		logf("kept %s", b.tmp)
		return
	}
	os.RemoveAll(b.tmp)
}

// stopStrays ends the processes still running in the bench's temporary
// dir once berth up has stopped: the git hooks (berth git-hook, under git
// http-backend) of a push that was cut short outlive berth up.
func (b *bench) stopStrays() {
	if b.tmp == "" {
		return
	}
	find := func() []int {
		var pids []int
		dirs, _ := os.ReadDir("/proc")
		for _, d := range dirs {
			pid, err := strconv.Atoi(d.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			cwd, err := os.Readlink(filepath.Join("/proc", d.Name(), "cwd"))
			if err == nil && (cwd == b.tmp || strings.HasPrefix(cwd, b.tmp+"/")) {
				pids = append(pids, pid)
			}
		}
		return pids
	}
	pids := find()
	if len(pids) == 0 {
		return
	}
	// A hook's build context, in /tmp (git http-backend does not pass
	// TMPDIR on): it is removed when the hook ends by itself, not when
	// it is killed.
	var contexts []string
	for _, pid := range pids {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			f, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
			if err == nil && strings.HasPrefix(f, filepath.Join(os.TempDir(), "berth-build-")) && strings.HasSuffix(f, ".tar") {
				contexts = append(contexts, f)
			}
		}
	}
	logf("cleanup: %d processes still run in %s after berth up stopped (pids %v): SIGTERM", len(pids), b.tmp, pids)
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	time.Sleep(2 * time.Second)
	for _, pid := range find() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, f := range contexts {
		if err := os.Remove(f); err == nil {
			logf("cleanup: removed %s, left by a git hook", f)
		}
	}
}

// isBase says whether image id is berth/demo:1, which the app ran first
// and which is not the bench's to remove.
func (b *bench) isBase(ctx context.Context, id string) bool {
	base, err := dockerCLI(ctx, "image", "inspect", "--format", "{{.Id}}", baseImage)
	return err != nil || strings.TrimSpace(base) == id
}

// dockerCLI runs the docker CLI; the error carries its output.
func dockerCLI(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	o, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(o)))
	}
	return strings.TrimSpace(string(o)), nil
}

// The progress lines and load average every bench prints.
var (
	logf    = measure.Logf
	loadavg = measure.LoadAvg
)
