// Command images benchmarks berth's image registry and pull caches in one
// run on this machine, on loopback only:
//
//   - Registry throughput: an image of about 100 MiB of random bytes (FROM
//     berth/busybox:1 plus one layer of random data, so nothing compresses
//     away) goes from this machine's Docker engine into a fresh engine of
//     the bench's own, with `berth image push` into a `berth up` of the
//     bench's own and `docker pull` from it, against the floor of
//     `docker save | docker load` of the same image; median of rounds.
//   - The herd: N (4) engines of the bench's own pull that image at the
//     same moment (a) through one pull cache they share, (b) through a
//     cache each, (c) straight from berth's registry. The caches
//     (internal/pullcache) run in this process; every request to berth's
//     registry, theirs and the engines' own, goes through a counting
//     reverse proxy, which says how many blob requests and bytes each case
//     cost the origin. A cache merges the pulls that go through it: one
//     fetch per blob holds for engines that share a cache; a cache per
//     engine fetches each blob once per engine, as pulling straight does.
//
// bench/run.sh (make bench) builds berth and runs it:
//
//	go run ./bench/images [-berth path/to/berth] [-out bench/images-results.txt] [-size 100] [-engines 4] [-rounds 3] [-keep]
//
// It needs root (dockerd, ip link) and the berth/busybox:1 image
// (scripts/build-images.sh). Engines, bridges, images and the data dir are
// removed at the end, also after a failure or Ctrl-C.
package main

import (
	"berth/bench/internal/measure"

	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

var (
	berthBin  = flag.String("berth", "", "berth binary (default: go build ./cmd/berth into the temporary dir)")
	out       = flag.String("out", "", "write the results here too (run.sh: bench/images-results.txt)")
	sizeMiB   = flag.Int("size", 100, "MiB of random bytes in the image's own layer")
	nEngines  = flag.Int("engines", 4, "engines of the herd")
	rounds    = flag.Int("rounds", 3, "rounds of the throughput comparison (medians)")
	keep      = flag.Bool("keep", false, "keep the temporary dir (berth's log and data, the engines' logs)")
	baseImage = "berth/busybox:1"
)

// timeout bounds the whole run.
const timeout = 20 * time.Minute

func main() {
	flag.Parse()
	os.Exit(run())
}

type bench struct {
	tmp     string
	image   string // the random image in this machine's engine
	berth   *berthUp
	engines []*engine
	config  string // docker CLI config dir with the logins
	proxy   *countingProxy
}

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	b := &bench{}
	defer b.cleanup()
	r, err := b.run(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench images: FAILED:", err)
		return 1
	}
	r.wall = time.Since(start)
	text := r.render()
	fmt.Print("\n" + text)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(text), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench images:", err)
			return 1
		}
		fmt.Printf("written to %s\n", *out)
	}
	return 0
}

func (b *bench) run(ctx context.Context) (*report, error) {
	var err error
	if b.tmp, err = os.MkdirTemp("", "berth-images-bench-"); err != nil {
		return nil, err
	}
	if _, err := dockerCLI(ctx, "image", "inspect", baseImage); err != nil {
		return nil, fmt.Errorf("%s is missing: run ./scripts/build-images.sh: %w", baseImage, err)
	}
	bin := *berthBin
	if bin == "" {
		bin = filepath.Join(b.tmp, "berth")
		logf("building berth")
		build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/berth")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return nil, fmt.Errorf("go build ./cmd/berth (run from the repository root): %w", err)
		}
	}
	r := &report{sizeMiB: *sizeMiB, nEngines: *nEngines}
	if r.imageBytes, err = b.buildImage(ctx); err != nil {
		return nil, err
	}
	if b.berth, err = startBerth(ctx, bin, b.tmp); err != nil {
		return nil, err
	}
	if b.proxy, err = startProxy("http://" + b.berth.Addr); err != nil {
		return nil, err
	}
	for i := range *nEngines {
		e, err := startEngine(ctx, b.tmp, i)
		if err != nil {
			return nil, err
		}
		b.engines = append(b.engines, e)
	}
	logf("%d engines of the bench's own are up", len(b.engines))
	b.config = filepath.Join(b.tmp, "docker-config")
	for _, host := range []string{b.berth.Addr, b.proxy.addr} {
		if _, err := dockerCLI(ctx, "--config", b.config, "login", host, "-u", "berth", "-p", b.berth.Token); err != nil {
			return nil, err
		}
	}
	if r.throughput, err = b.throughput(ctx); err != nil {
		return nil, fmt.Errorf("throughput: %w", err)
	}
	if r.herd, err = b.herd(ctx); err != nil {
		return nil, fmt.Errorf("herd: %w", err)
	}
	return r, nil
}

// buildImage builds FROM berth/busybox:1 a layer of random bytes in this
// machine's engine; it returns the image's size as the engine says.
func (b *bench) buildImage(ctx context.Context) (int64, error) {
	dir := filepath.Join(b.tmp, "context")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	f, err := os.Create(filepath.Join(dir, "random"))
	if err != nil {
		return 0, err
	}
	_, err = io.CopyN(f, rand.Reader, int64(*sizeMiB)<<20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("random bytes: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM "+baseImage+"\nCOPY random /random\n"), 0o644); err != nil {
		return 0, err
	}
	b.image = fmt.Sprintf("berth-bench/images-random:%d", time.Now().UnixNano())
	logf("building %s (%d MiB of random bytes on %s)", b.image, *sizeMiB, baseImage)
	if _, err := dockerCLI(ctx, "build", "-q", "-t", b.image, dir); err != nil {
		b.image = ""
		return 0, err
	}
	out, err := dockerCLI(ctx, "image", "inspect", "--format", "{{.Size}}", b.image)
	if err != nil {
		return 0, err
	}
	var size int64
	fmt.Sscan(out, &size)
	return size, nil
}

// cleanup removes what the bench made, whatever happened.
func (b *bench) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, e := range b.engines {
		e.stop()
	}
	if b.proxy != nil {
		b.proxy.close()
	}
	b.berth.Stop()
	if b.image != "" {
		if _, err := dockerCLI(ctx, "rmi", b.image); err != nil {
			logf("cleanup: %v", err)
		}
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

// The progress lines and load average every bench prints.
var (
	logf    = measure.Logf
	loadavg = measure.LoadAvg
)
