package registry

import (
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// conformanceTool is the OCI distribution-spec conformance suite, pinned
// in go.mod as a tool (so it builds offline, from the module cache).
const conformanceTool = "github.com/opencontainers/distribution-spec/conformance"

// The suite runs against the registry as berth serves it, token auth
// included, with every API enabled: pull, push, content discovery (tag
// list, referrers) and content management (deletes). It must report zero
// failures and zero errors; a suite that cannot be built or run fails.
func TestOCIConformance(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command to build the conformance suite: %v", err)
	}
	work := t.TempDir()
	bin := filepath.Join(work, "conformance")
	build := exec.Command(goBin, "build", "-o", bin, conformanceTool)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the conformance suite (go build %s): %v\n%s", conformanceTool, err, out)
	}

	srv := serve(t, t.TempDir(), tokens, nil)
	results := filepath.Join(work, "results")
	run := exec.Command(bin)
	run.Dir = work // no oci-conformance.yaml here: the environment says it all
	run.Env = append(os.Environ(),
		"OCI_REGISTRY="+strings.TrimPrefix(srv.URL, "http://"),
		"OCI_TLS=disabled",
		"OCI_REPO1=conformance/repo1",
		"OCI_REPO2=conformance/repo2",
		"OCI_USERNAME=berth",
		"OCI_PASSWORD="+userToken,
		"OCI_RESULTS_DIR="+results,
		"OCI_VERSION=1.1",
		"OCI_API_PULL=true",
		"OCI_API_PUSH=true",
		"OCI_API_TAGS_LIST=true",
		"OCI_API_REFERRER=true",
		"OCI_API_TAGS_DELETE=true",
		"OCI_API_MANIFESTS_DELETE=true",
		"OCI_API_BLOBS_DELETE=true",
		"OCI_API_BLOBS_UPLOAD_CANCEL=true",
		// Distribution v3.1 keeps every blob under its sha256 digest; the
		// spec's sha512 content is a data set the suite may leave out.
		"OCI_DATA_SHA512=false",
	)
	out, err := run.CombinedOutput()
	report := string(out)
	if err != nil {
		t.Fatalf("conformance suite: %v\n%s", err, report)
	}
	// It exits 0 when it cannot even load its configuration: the junit
	// report is the proof that it ran.
	suites := readJunit(t, filepath.Join(results, "junit.xml"), report)
	passed := suites.Tests - suites.Failures - suites.Errors - suites.Skipped - suites.Disabled
	t.Logf("conformance: %d tests, %d passed, %d failed, %d errors, %d skipped, %d disabled",
		suites.Tests, passed, suites.Failures, suites.Errors, suites.Skipped, suites.Disabled)
	if suites.Failures != 0 || suites.Errors != 0 || !strings.Contains(report, "OCI Conformance Result: Pass") {
		t.Fatalf("conformance: %d failures, %d errors\n%s", suites.Failures, suites.Errors, report)
	}
	if passed < 100 {
		t.Fatalf("conformance: only %d tests passed\n%s", passed, report)
	}
	// The APIs berth needs are not just absent from the failures: they pass.
	for _, name := range []string{
		"Blob push", "Blob get", "Blob head", "Blob delete", "Blob mount",
		"Manifest put by tag", "Manifest put by digest", "Manifest get by tag", "Manifest get by digest",
		"Manifest head by tag", "Manifest put with subject", "Blob upload cancel", "Manifest delete", "Tag listing", "Tag delete", "Referrers",
	} {
		if got := apiStatus(report, name); got != "Pass" {
			t.Errorf("conformance: API %q is %q, want Pass", name, got)
		}
	}
	if t.Failed() {
		t.Log(report)
	}
	t.Logf("what the suite skipped, and why:\n%s", skipped(report))
}

// skipped is the report's skipped tests with their reasons.
func skipped(report string) string {
	var b strings.Builder
	lines := strings.Split(report, "\n")
	for i, l := range lines {
		if strings.HasSuffix(l, ": Skip") && i+1 < len(lines) && strings.HasPrefix(strings.TrimSpace(lines[i+1]), "- ") {
			b.WriteString(strings.TrimSpace(l) + " " + strings.TrimSpace(lines[i+1]) + "\n")
		}
	}
	return b.String()
}

type junitSuites struct {
	Tests    int `xml:"tests,attr"`
	Errors   int `xml:"errors,attr"`
	Failures int `xml:"failures,attr"`
	Skipped  int `xml:"skipped,attr"`
	Disabled int `xml:"disabled,attr"`
}

func readJunit(t *testing.T, path, report string) junitSuites {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the conformance suite did not run (no junit report): %v\n%s", err, report)
	}
	var s junitSuites
	if err := xml.Unmarshal(b, &s); err != nil {
		t.Fatalf("conformance junit report: %v", err)
	}
	if s.Tests == 0 {
		t.Fatalf("the conformance suite ran no tests\n%s", report)
	}
	return s
}

// apiStatus reads an API's line of the report's "API conformance" table:
// "  Tag listing...................:       Pass".
func apiStatus(report, name string) string {
	m := regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(name) + `\.+:\s+(\S+)\s*$`).FindStringSubmatch(report)
	if m == nil {
		return "missing"
	}
	return m[1]
}
