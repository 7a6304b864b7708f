package api

import (
	"regexp"
	"time"
)

// Builds are tasks of the queue BuildQueue whose spec carries a
// BuildSpec: the agent of the node they run on builds the context through
// its Docker engine instead of running a container, and the server pushes
// the image into its registry as <app>:<tag>.
const (
	BuildQueue = "builds"
	// BuildConcurrency is the limit the builds queue gets when a first
	// build finds no queue record ('berth queue set builds' changes it).
	BuildConcurrency = 1
	// BuilderLabel reserves nodes for builds: while any node carries
	// BuilderLabel=true, builds run only on such nodes.
	BuilderLabel = "builder"
	// RevisionLabel is the image label that holds the built revision.
	RevisionLabel = "org.opencontainers.image.revision"
	// RevisionFile is where the image holds the revision, as a file.
	RevisionFile = "/app/REVISION"

	DefaultBuildMemory = Bytes(2 << 30)
	DefaultBuildCPU    = MilliCPU(1000)
	// DefaultBuildContextMax bounds a build's context (the server's
	// --build-context-max).
	DefaultBuildContextMax = 500 << 20
)

// BuildSpec is what makes a task a build.
type BuildSpec struct {
	App    string `json:"app"`
	Tag    string `json:"tag"`              // the image is <app>:<tag> in berth's registry
	Commit string `json:"commit,omitempty"` // the git commit built; "" outside git
	Dirty  bool   `json:"dirty,omitempty"`  // the working tree, not the commit
	// Revision is what the image's /app/REVISION and revision label hold:
	// the commit, <commit>-dirty, or (outside git) the tag.
	Revision    string `json:"revision"`
	Deploy      bool   `json:"deploy,omitempty"` // deploy the app with the image once pushed
	ContextSize int64  `json:"context_size"`
	// Builders: builds go only to nodes labelled builder=true (some node
	// had the label when the build was submitted).
	Builders bool `json:"builders,omitempty"`
}

// BuildResult is what a build produced, kept on its task.
type BuildResult struct {
	Image  string `json:"image"`  // <app>:<tag>
	Digest string `json:"digest"` // of the manifest in berth's registry
	Size   int64  `json:"size"`   // bytes of the image's config and layers
	// AppRevision is the app revision the build deployed (0: none).
	AppRevision int64  `json:"app_revision,omitempty"`
	DeployError string `json:"deploy_error,omitempty"`
}

// Build is a build as GET /v1/builds shows it: its task, seen as a build.
type Build struct {
	ID          string    `json:"id"`
	App         string    `json:"app"`
	Image       string    `json:"image"` // <app>:<tag>
	Commit      string    `json:"commit,omitempty"`
	Dirty       bool      `json:"dirty,omitempty"`
	Revision    string    `json:"revision"`
	Deploy      bool      `json:"deploy,omitempty"`
	ContextSize int64     `json:"context_size"`
	State       string    `json:"state"` // the task's state
	Node        string    `json:"node,omitempty"`
	Attempts    int       `json:"attempts"`
	Error       string    `json:"error,omitempty"`
	Digest      string    `json:"digest,omitempty"`
	Size        int64     `json:"size,omitempty"`
	AppRevision int64     `json:"app_revision,omitempty"`
	DeployError string    `json:"deploy_error,omitempty"`
	Created     time.Time `json:"created"`
	Started     time.Time `json:"started,omitzero"` // of the latest attempt
	Ended       time.Time `json:"ended,omitzero"`
}

// BuildOf shows a build task as a build; ok is false for any other task.
func BuildOf(t Task) (Build, bool) {
	b := t.Spec.Build
	if b == nil {
		return Build{}, false
	}
	out := Build{
		ID: t.ID, App: b.App, Image: b.App + ":" + b.Tag, Commit: b.Commit, Dirty: b.Dirty,
		Revision: b.Revision, Deploy: b.Deploy, ContextSize: b.ContextSize,
		State: t.State, Node: t.Node, Attempts: len(t.Attempts), Error: t.Error,
		Created: t.Created, Ended: t.Ended,
	}
	if a := t.Current(); a != nil {
		out.Started = a.Started
		if out.Node == "" && !TaskTerminal(t.State) {
			out.Node = a.Node
		}
	}
	if r := t.Built; r != nil {
		out.Digest, out.Size, out.AppRevision, out.DeployError = r.Digest, r.Size, r.AppRevision, r.DeployError
	}
	return out, true
}

// BuildImageResult answers an agent's upload of a built image.
type BuildImageResult struct {
	BuildResult
	Layers   int `json:"layers"`
	Uploaded int `json:"uploaded"` // blobs the registry did not have yet
}

var (
	commitSHA = regexp.MustCompile(`^([0-9a-f]{40}|[0-9a-f]{64})$`)
	imageTag  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// ValidAppName reports, as a *FieldError on field, whether name may name
// an app.
func ValidAppName(field, name string) error {
	if name == "" {
		return fieldErr(field, "required")
	}
	if len(name) > MaxNameLen || !dnsLabel.MatchString(name) {
		return fieldErr(field, "%q is not a DNS label of at most %d characters (a-z, 0-9, '-', not at either end)", name, MaxNameLen)
	}
	return nil
}

// Validate checks a build's spec; fields are named as the query of
// POST /v1/builds names them.
func (b *BuildSpec) Validate() error {
	if err := ValidAppName("app", b.App); err != nil {
		return err
	}
	switch {
	case b.Commit != "" && !commitSHA.MatchString(b.Commit):
		return fieldErr("commit", "%q is not a full git commit id (40 or 64 hex digits)", b.Commit)
	case b.Dirty && b.Commit == "":
		return fieldErr("dirty", "a dirty build needs the commit it changes")
	case b.Tag == "":
		return fieldErr("tag", "required")
	case !imageTag.MatchString(b.Tag):
		return fieldErr("tag", "%q is not an image tag (A-Z a-z 0-9 _ . -, at most 128, not starting with . or -)", b.Tag)
	case b.Revision == "" || len(b.Revision) > 200:
		return fieldErr("revision", "%q: 1-200 characters", b.Revision)
	}
	return plainText("revision", b.Revision)
}

// Placement is where a build may run: nil (any node), or only on builder
// nodes.
func (b *BuildSpec) Placement() *Placement {
	if b == nil || !b.Builders {
		return nil
	}
	return &Placement{Constraints: []string{BuilderLabel + " == true"}}
}
