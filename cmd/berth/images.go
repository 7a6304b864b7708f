package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"berth/api"
	"berth/internal/client"
	"berth/internal/imagecopy"
	"berth/internal/runtime/docker"
)

func imageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Push images into berth's registry and list them",
		Long: `berth's registry is served by the server under /v2/ on the API's address.
An app whose image names a repository of it without a registry host
(image: my/app:1) runs that image, pinned to its digest at deploy time.

'berth image push' copies an image from the local Docker engine into it
with your berth token: no docker login, no daemon configuration.`,
	}
	cmd.AddCommand(imagePushCmd(g), imageLsCmd(g))
	return cmd
}

func imagePushCmd(g *globals) *cobra.Command {
	var as string
	cmd := &cobra.Command{
		Use:   "push REF [--as REPO:TAG]",
		Short: "Copy an image from the local Docker engine into berth's registry; print its digest",
		Long: `Copy an image of the local Docker engine (DOCKER_HOST, or its default
socket) into berth's registry, as REF's repository and tag without any
registry host (my/app:1 and localhost:5000/my/app:1 both go to my/app:1),
or as --as REPO:TAG. Layers the registry has already are not sent again.
Progress goes to stderr; the digest is printed on stdout.`,
		Example: `  berth image push my/app:1
  berth image push my/app:1 --as hello:2
  echo "image: my/app:1" >> hello.yaml && berth deploy hello.yaml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			repo, tag, err := pushTarget(args[0], as)
			if err != nil {
				return err
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			res, err := pushImage(cmd.Context(), cl, args[0], repo, tag, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.Digest)
			return nil
		},
	}
	cmd.Flags().StringVar(&as, "as", "", "repository and tag in berth's registry (default: REF's, without a registry host)")
	return cmd
}

// pushTarget is the repository and tag an image goes to: --as, or the
// reference's own without its registry host (no tag: latest).
func pushTarget(ref, as string) (string, string, error) {
	if as != "" {
		repo, tag, ok := api.RegistryImage(as)
		if !ok {
			return "", "", fmt.Errorf("--as %s: give a repository and tag of berth's registry, without a registry host or digest (like my/app:1)", as)
		}
		return repo, tag, nil
	}
	if strings.Contains(ref, "@") {
		return "", "", fmt.Errorf("%s names a digest, not a tag: say which tag it gets with --as REPO:TAG", ref)
	}
	name := ref
	if first, rest, ok := strings.Cut(ref, "/"); ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		name = rest // drop the registry host
	}
	repo, tag, _ := api.RegistryImage(name)
	return repo, tag, nil
}

// pushImage streams the image out of the local engine into the registry
// of the server cl talks to, reporting on w.
func pushImage(ctx context.Context, cl *client.Client, ref, repo, tag string, w io.Writer) (imagecopy.Result, error) {
	// Ask the servers first: the push then goes to one that answers.
	if _, err := cl.Status(ctx); err != nil {
		return imagecopy.Result{}, err
	}
	rt, err := docker.New("")
	if err != nil {
		return imagecopy.Result{}, fmt.Errorf("the local Docker engine: %w", err)
	}
	defer rt.Close()
	layers, err := rt.ImageLayers(ctx, ref) // lets a new image stream in as it is read
	if err != nil {
		return imagecopy.Result{}, err
	}
	save, err := rt.SaveImage(ctx, ref)
	if err != nil {
		return imagecopy.Result{}, err
	}
	defer save.Close()
	fmt.Fprintf(w, "pushing %s from the local Docker engine to %s:%s in berth's registry\n", ref, repo, tag)
	read := &countingReader{r: save}
	stop := reportReads(read, w)
	start := time.Now()
	res, err := imagecopy.PushWith(ctx, read, cl.Registry(), repo, tag, imagecopy.Options{Layers: layers, Progress: func(e imagecopy.Event) {
		state := "pushed"
		if !e.Uploaded {
			state = "already in the registry"
		}
		fmt.Fprintf(w, "  %s  %8s  %s\n", shortDigest(e.Blob), api.Bytes(e.Size).Human(), state)
	}})
	stop()
	if err != nil {
		return res, pushError(err)
	}
	took := time.Since(start)
	fmt.Fprintf(w, "%s:%s: %d layers, %s (%d blobs sent, %s from the engine in %s)\n", repo, tag, res.Layers,
		api.Bytes(res.Size).Human(), res.Uploaded, api.Bytes(read.n.Load()).Human(), took.Round(10*time.Millisecond))
	return res, nil
}

// pushError says what to do about a refusal of the registry.
func pushError(err error) error {
	var re *imagecopy.RegistryError
	if !errors.As(err, &re) {
		return err
	}
	switch re.Status {
	case http.StatusUnauthorized:
		return fmt.Errorf("%w (the token is wrong or removed: pass a user token with --token-file or BERTH_TOKEN)", err)
	case http.StatusForbidden:
		return fmt.Errorf("%w (pushing needs a user token: berth token create --role user)", err)
	case http.StatusNotFound:
		return fmt.Errorf("%w (does this berth server serve a registry under /v2/?)", err)
	}
	return err
}

// reportReads prints how much of a long save has been read, every few
// seconds, until stop is called: a big layer shows nothing else until it
// is spooled.
func reportReads(r *countingReader, w io.Writer) (stop func()) {
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		t := time.NewTicker(3 * time.Second)
		defer t.Stop()
		var last int64
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if n := r.n.Load(); n != last {
					fmt.Fprintf(w, "  read %s from the engine\n", api.Bytes(n).Human())
					last = n
				}
			}
		}
	}()
	return func() { close(done); <-ended }
}

type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// shortDigest is a digest as listings show it: sha256: and 12 hex digits.
func shortDigest(d string) string {
	if algo, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
		return algo + ":" + hex[:12]
	}
	return d
}

func imageLsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "ls [REPO]",
		Aliases: []string{"list"},
		Short:   "List the images of berth's registry: repository, tag, digest, size, which apps and instances use them",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			repo := ""
			if len(args) == 1 {
				repo = args[0]
			}
			l, err := cl.ListImages(cmd.Context(), repo)
			if err != nil {
				return err
			}
			if len(l.Items) == 0 && repo == "" {
				fmt.Fprintln(cmd.ErrOrStderr(), "berth's registry holds no images yet (berth image push REF adds one)")
				return nil
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "REPOSITORY\tTAG\tDIGEST\tSIZE\tUSED BY")
			for _, im := range l.Items {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", im.Repository, orDash(im.Tag), shortDigest(im.Digest), api.Bytes(im.Size).Human(), usedBy(im))
			}
			return tw.Flush()
		},
	}
}

// usedBy says which apps run an image: "hello r3 (2 instances)", one per
// app, apps whose instances still run it at an older revision too.
func usedBy(im client.Image) string {
	var apps []string
	counts := map[string]int{}
	revs := map[string]int64{}
	for _, r := range im.Revisions {
		if _, ok := revs[r.App]; !ok {
			apps = append(apps, r.App)
		}
		revs[r.App] = r.Revision
	}
	for _, in := range im.Instances {
		if _, ok := revs[in.App]; !ok && counts[in.App] == 0 {
			apps = append(apps, in.App)
		}
		counts[in.App]++
	}
	var parts []string
	for _, app := range apps {
		n, s := counts[app], app
		rev, current := revs[app]
		if current {
			s += fmt.Sprintf(" r%d", rev)
		}
		switch {
		case n == 0:
		case current:
			s += fmt.Sprintf(" (%s)", plural(n, "instance"))
		default:
			s += fmt.Sprintf(" (%s of an older revision)", plural(n, "instance"))
		}
		parts = append(parts, s)
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

// plural is "1 instance", "2 instances".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
