package measure

import "testing"

func TestRouteCollapsesNames(t *testing.T) {
	for path, want := range map[string]string{
		"/v1/tasks":         "/v1/tasks",
		"/v1/tasks/reports": "/v1/tasks/reports",
		"/v1/tasks/0123456789abcdef/attempts/2/log": "/v1/tasks/{}/attempts/{}/log",
		"/v1/nodes/bench":     "/v1/nodes/{}",
		"/v1/tokens/0123abcd": "/v1/tokens/{}",
	} {
		if got := Route(path); got != want {
			t.Errorf("Route(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestWarnLogCountsByLevelAndMessage(t *testing.T) {
	var w WarnLog
	for _, l := range []string{
		`time=2026-11-27T10:00:00Z level=WARN msg="apply request took too long" took=120ms`,
		`time=2026-11-27T10:00:01Z level=WARN msg="apply request took too long" took=300ms`,
		`time=2026-11-27T10:00:02Z level=ERROR msg=stopped err=boom`,
	} {
		if _, err := w.Write([]byte(l)); err != nil {
			t.Fatal(err)
		}
	}
	want := `2x level=WARN "apply request took too long"; 1x level=ERROR stopped`
	if got := w.Summary(); got != want {
		t.Fatalf("Summary() = %q, want %q", got, want)
	}
}
