package api

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// exampleSpec is the example of the docs; it uses every field.
const exampleSpec = `
name: hello
image: berth/demo:1
command: ["/demo"]
env: {GREETING: hi}
port: 8080
replicas: 3
resources: {cpu: 250m, memory: 64Mi, pids: 256}
health: {http: /healthz, interval: 2s, timeout: 1s, retries: 3, start_period: 5s}
stop_grace: 10s
init: true
labels: {team: web}
`

func dur(d time.Duration) *Duration { return ptr(Duration(d)) }

func TestParseExample(t *testing.T) {
	spec, err := ParseAppSpec([]byte(exampleSpec))
	if err != nil {
		t.Fatalf("ParseAppSpec: %v", err)
	}
	want := AppSpec{
		Name:      "hello",
		Image:     "berth/demo:1",
		Command:   []string{"/demo"},
		Env:       map[string]string{"GREETING": "hi"},
		Port:      8080,
		Replicas:  ptr(3),
		Resources: Resources{CPU: 250, Memory: 64 << 20, Pids: 256},
		Health: &Health{
			HTTP: "/healthz", Interval: dur(2 * time.Second), Timeout: dur(time.Second),
			Retries: 3, StartPeriod: dur(5 * time.Second),
		},
		StopGrace: dur(10 * time.Second),
		Init:      ptr(true),
		Labels:    map[string]string{"team": "web"},
	}
	if !reflect.DeepEqual(spec, want) {
		t.Fatalf("parsed\n%+v\nwant\n%+v", spec, want)
	}
	// Everything is set, so Default changes nothing.
	spec.Default()
	if !reflect.DeepEqual(spec, want) {
		t.Errorf("Default changed a complete spec:\n%+v", spec)
	}
	if err := spec.Validate(1 << 30); err != nil {
		t.Errorf("Validate: %v", err)
	}
	// JSON is YAML: the same spec written as JSON parses the same.
	js, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseAppSpec(js)
	if err != nil || !reflect.DeepEqual(again, want) {
		t.Errorf("JSON %s parsed to %+v, %v", js, again, err)
	}
}

func TestDefault(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want AppSpec
	}{
		{
			name: "minimal",
			in:   "name: a\nimage: b",
			want: AppSpec{
				Name: "a", Image: "b", Replicas: ptr(1),
				Resources: Resources{CPU: 100, Memory: 128 << 20, Pids: 512},
				StopGrace: dur(10 * time.Second), Init: ptr(true),
			},
		},
		{
			name: "a port gets a tcp check",
			in:   "name: a\nimage: b\nport: 80",
			want: AppSpec{
				Name: "a", Image: "b", Port: 80, Replicas: ptr(1),
				Resources: Resources{CPU: 100, Memory: 128 << 20, Pids: 512},
				StopGrace: dur(10 * time.Second), Init: ptr(true),
				Health: &Health{
					TCP: true, Interval: dur(5 * time.Second), Timeout: dur(2 * time.Second),
					Retries: 3, StartPeriod: dur(10 * time.Second),
				},
			},
		},
		{
			name: "explicit zero and false are kept where they mean something",
			in:   "name: a\nimage: b\nreplicas: 0\nstop_grace: 0s\ninit: false\nhealth: {exec: ['true'], start_period: 0s}",
			want: AppSpec{
				Name: "a", Image: "b", Replicas: ptr(0),
				Resources: Resources{CPU: 100, Memory: 128 << 20, Pids: 512},
				StopGrace: dur(0), Init: ptr(false),
				Health: &Health{
					Exec: []string{"true"}, Interval: dur(5 * time.Second), Timeout: dur(2 * time.Second),
					Retries: 3, StartPeriod: dur(0),
				},
			},
		},
		{
			// Resources have no "unset" apart from zero, so an explicit
			// zero is the default, not an error.
			name: "explicit zero resources are defaulted",
			in:   "name: a\nimage: b\nresources: {cpu: \"0\", memory: 0, pids: 0}",
			want: AppSpec{
				Name: "a", Image: "b", Replicas: ptr(1),
				Resources: Resources{CPU: 100, Memory: 128 << 20, Pids: 512},
				StopGrace: dur(10 * time.Second), Init: ptr(true),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := ParseAppSpec([]byte(tt.in))
			if err != nil {
				t.Fatalf("ParseAppSpec: %v", err)
			}
			spec.Default()
			if !reflect.DeepEqual(spec, tt.want) {
				t.Errorf("defaulted\n%+v\nwant\n%+v", spec, tt.want)
			}
			if err := spec.Validate(0); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

// TestSpecErrors checks that every bad input is a *FieldError naming the
// field, whether ParseAppSpec or Validate (after Default) finds it.
func TestSpecErrors(t *testing.T) {
	const base = "name: hello\nimage: berth/demo:1\n"
	tests := []struct {
		name      string
		in        string
		maxMemory Bytes
		field     string
		msg       string // substring of the message
	}{
		{name: "malformed yaml", in: "name: [hello", field: "", msg: "malformed YAML"},
		{name: "tab indentation", in: "name: hello\n\timage: x", field: "", msg: "malformed YAML"},
		{name: "duplicate key", in: base + "name: again", field: "", msg: "already set"},
		{name: "empty", in: " \n", field: "", msg: "empty spec"},
		{name: "not a mapping", in: "[1, 2]", field: "", msg: "want a mapping"},
		{name: "too large", in: base + "command: [\"" + strings.Repeat("x", MaxSpecBytes) + "\"]", field: "", msg: "larger than"},
		{name: "unknown top-level field", in: base + "colour: red", field: "colour", msg: "unknown field"},
		{name: "history_limit too large", in: base + "history_limit: 1001", field: "history_limit", msg: "between 1 and 1000"},
		{name: "history_limit zero", in: base + "history_limit: 0", field: "history_limit", msg: "between 1 and 1000"},
		{name: "update parallel zero", in: base + "update: {parallel: 0}", field: "update.parallel", msg: "between 1 and"},
		{name: "update max_unavailable negative", in: base + "update: {max_unavailable: -1}", field: "update.max_unavailable", msg: "between 0 and"},
		{name: "update progress_deadline short", in: base + "update: {progress_deadline: 1s}", field: "update.progress_deadline", msg: "between 5s and 24h"},
		{name: "update unknown field", in: base + "update: {surge: 2}", field: "update.surge", msg: "unknown field"},
		{name: "name missing", in: "image: x", field: "name", msg: "required"},
		{name: "name empty", in: "name: ''\nimage: x", field: "name", msg: "required"},
		{name: "name uppercase", in: "name: Hello\nimage: x", field: "name", msg: "DNS label"},
		{name: "name too long", in: "name: " + strings.Repeat("a", MaxNameLen+1) + "\nimage: x", field: "name", msg: "DNS label"},
		{name: "name leading dash", in: "name: -hello\nimage: x", field: "name", msg: "DNS label"},
		{name: "name trailing dash", in: "name: hello-\nimage: x", field: "name", msg: "DNS label"},
		{name: "name with dot", in: "name: a.b\nimage: x", field: "name", msg: "DNS label"},
		{name: "name a number", in: "name: 5\nimage: x", field: "name", msg: "want a string"},
		{name: "image empty", in: "name: hello", field: "image", msg: "required"},
		{name: "image uppercase", in: "name: hello\nimage: Berth/Demo:1", field: "image", msg: "not a valid image"},
		{name: "image with space", in: "name: hello\nimage: 'berth demo'", field: "image", msg: "not a valid image"},
		{name: "image empty tag", in: "name: hello\nimage: 'berth:'", field: "image", msg: "not a valid image"},
		{name: "port too large", in: base + "port: 70000", field: "port", msg: "not a TCP port"},
		{name: "port negative", in: base + "port: -1", field: "port", msg: "not a TCP port"},
		{name: "replicas -1", in: base + "replicas: -1", field: "replicas", msg: "out of range 0-1000"},
		{name: "replicas 1001", in: base + "replicas: 1001", field: "replicas", msg: "out of range 0-1000"},
		{name: "replicas not a number", in: base + "replicas: three", field: "replicas", msg: "want an integer"},
		{name: "replicas fraction", in: base + "replicas: 1.5", field: "replicas", msg: "want an integer"},
		{name: "cpu abc", in: base + "resources: {cpu: abc}", field: "resources.cpu", msg: `cpu "abc"`},
		{name: "cpu -1", in: base + "resources: {cpu: \"-1\"}", field: "resources.cpu", msg: "out of range"},
		{name: "cpu -250m", in: base + "resources: {cpu: -250m}", field: "resources.cpu", msg: "out of range"},
		{name: "cpu too large", in: base + "resources: {cpu: 2000}", field: "resources.cpu", msg: "out of range"},
		// Known gap: a value of the wrong JSON kind for cpu or memory loses
		// its field (stringOrNumber's error is not an ownTypeError).
		{name: "cpu list", in: base + "resources: {cpu: [1]}", field: "resources.cpu", msg: "string or a number"},
		{name: "memory 1Mi", in: base + "resources: {memory: 1Mi}", field: "resources.memory", msg: "below the minimum of 4Mi"},
		{name: "memory fraction", in: base + "resources: {memory: 1.5Gi}", field: "resources.memory", msg: `memory "1.5Gi"`},
		{name: "memory overflow", in: base + "resources: {memory: 9000000000Ti}", field: "resources.memory", msg: "too large"},
		{name: "memory above the largest node", in: base + "resources: {memory: 2Gi}", maxMemory: 1 << 30, field: "resources.memory", msg: "more than any node has (largest: 1Gi)"},
		{name: "pids explicit negative", in: base + "resources: {pids: -1}", field: "resources.pids", msg: "out of range"},
		{name: "pids too large", in: base + "resources: {pids: 5000000}", field: "resources.pids", msg: "out of range"},
		{name: "stop_grace 2x", in: base + "stop_grace: 2x", field: "stop_grace", msg: `duration "2x"`},
		{name: "stop_grace -1s", in: base + "stop_grace: -1s", field: "stop_grace", msg: "out of range 0s-1h"},
		{name: "stop_grace 2h", in: base + "stop_grace: 2h", field: "stop_grace", msg: "out of range 0s-1h"},
		{name: "stop_grace a number", in: base + "stop_grace: 10", field: "stop_grace", msg: "duration string"},
		{name: "health interval 2x", in: base + "health: {exec: ['true'], interval: 2x}", field: "health.interval", msg: `duration "2x"`},
		{name: "health interval too short", in: base + "health: {exec: ['true'], interval: 50ms}", field: "health.interval", msg: "out of range"},
		{name: "health timeout too short", in: base + "health: {exec: ['true'], timeout: 1ms}", field: "health.timeout", msg: "out of range"},
		{name: "health retries", in: base + "health: {exec: ['true'], retries: 101}", field: "health.retries", msg: "out of range"},
		{name: "health start_period -1s", in: base + "health: {exec: ['true'], start_period: -1s}", field: "health.start_period", msg: "out of range"},
		{name: "health two kinds", in: base + "port: 80\nhealth: {http: /healthz, tcp: true}", field: "health", msg: "only one of"},
		{name: "health http and exec", in: base + "port: 80\nhealth: {http: /healthz, exec: ['true']}", field: "health", msg: "only one of"},
		{name: "health no kind", in: base + "port: 80\nhealth: {interval: 1s}", field: "health", msg: "set one of"},
		{name: "health http without port", in: base + "health: {http: /healthz}", field: "health", msg: "need port"},
		{name: "health tcp without port", in: base + "health: {tcp: true}", field: "health", msg: "need port"},
		{name: "health http not a path", in: base + "port: 80\nhealth: {http: healthz}", field: "health.http", msg: "not a path"},
		// Known gap: a nested unknown field is named without its path
		// ("grpc", not "health.grpc"): decodeError only sees the JSON
		// decoder's message, which has no path.
		{name: "health unknown field", in: base + "health: {grpc: true}", field: "health.grpc", msg: "unknown field"},
		{name: "command NUL", in: base + "command: [ok, \"a\\0b\"]", field: "command[1]", msg: "control character U+0000"},
		{name: "command not a list", in: base + "command: 5", field: "command", msg: "want a list"},
		{name: "env name invalid", in: base + "env: {1BAD: x}", field: "env.1BAD", msg: "not a valid environment variable name"},
		{name: "env name with dash", in: base + "env: {A-B: x}", field: "env.A-B", msg: "not a valid environment variable name"},
		{name: "env value NUL", in: base + "env: {A: \"\\0\"}", field: "env.A", msg: "control character U+0000"},
		{name: "env value a list", in: base + "env: {A: [1]}", field: "env", msg: "want a string"},
		{name: "label reserved prefix", in: base + "labels: {berth.role: x}", field: "labels.berth.role", msg: "reserved"},
		{name: "label name invalid", in: base + "labels: {-x: z}", field: "labels.-x", msg: "not a valid label name"},
		{name: "label value too long", in: base + "labels: {x: " + strings.Repeat("y", 1025) + "}", field: "labels.x", msg: "longer than 1024"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := ParseAppSpec([]byte(tt.in))
			if err == nil {
				spec.Default()
				err = spec.Validate(tt.maxMemory)
			}
			if err == nil {
				t.Fatalf("no error for %q", tt.in)
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is a %T, want *FieldError", err, err)
			}
			if fe.Field != tt.field || !strings.Contains(fe.Message, tt.msg) {
				t.Errorf("error = field %q message %q, want field %q message containing %q", fe.Field, fe.Message, tt.field, tt.msg)
			}
		})
	}
}

// TestValidateBounds checks values just inside the limits.
func TestValidateBounds(t *testing.T) {
	for _, in := range []string{
		"name: " + strings.Repeat("a", MaxNameLen) + "\nimage: x",
		"name: a-1\nimage: registry.example.com:5000/team/app_x:v1.2@sha256:" + strings.Repeat("a", 64),
		"name: a\nimage: x\nreplicas: 0",
		"name: a\nimage: x\nreplicas: 1000",
		"name: a\nimage: x\nresources: {cpu: 1m, memory: 4Mi, pids: 1}",
		"name: a\nimage: x\nresources: {cpu: 1024, memory: 1Gi}",
		"name: a\nimage: x\nstop_grace: 1h",
		"name: a\nimage: x\nport: 65535\nhealth: {tcp: true, interval: 100ms, timeout: 10ms, retries: 100, start_period: 1h}",
		"name: a\nimage: x\nlabels: {berth: x, team.io/role: z}",
	} {
		spec, err := ParseAppSpec([]byte(in))
		if err != nil {
			t.Errorf("ParseAppSpec(%q): %v", in, err)
			continue
		}
		spec.Default()
		if err := spec.Validate(1 << 30); err != nil {
			t.Errorf("Validate(%q): %v", in, err)
		}
	}
}

func TestFieldErrorString(t *testing.T) {
	if got := (&FieldError{Field: "resources.cpu", Message: "bad"}).Error(); got != "resources.cpu: bad" {
		t.Errorf("Error() = %q", got)
	}
	if got := (&FieldError{Message: "empty spec"}).Error(); got != "empty spec" {
		t.Errorf("Error() = %q", got)
	}
}

func TestParseMilliCPU(t *testing.T) {
	tests := []struct {
		in   string
		want MilliCPU
		str  string // String() of the result
	}{
		{"250m", 250, "250m"},
		{"0.5", 500, "500m"},
		{".25", 250, "250m"},
		{"2", 2000, "2"},
		{"1.5", 1500, "1500m"},
		{"1000m", 1000, "1"},
		{" 100m ", 100, "100m"},
		{"0", 0, "0"},
		{"0.0004", 0, "0"}, // rounds to whole millicores
		{"-1", -1000, "-1"},
	}
	for _, tt := range tests {
		got, err := ParseMilliCPU(tt.in)
		if err != nil || got != tt.want || got.String() != tt.str {
			t.Errorf("ParseMilliCPU(%q) = %d (%q), %v; want %d (%q)", tt.in, got, got, err, tt.want, tt.str)
		}
		// The String form parses back to the same value.
		if back, err := ParseMilliCPU(got.String()); err != nil || back != got {
			t.Errorf("ParseMilliCPU(%q) = %d, %v; want %d", got.String(), back, err, got)
		}
	}
	for _, in := range []string{"", "abc", "m", "1.5m", "NaN", "Inf", "1e10", "250 m"} {
		if got, err := ParseMilliCPU(in); err == nil {
			t.Errorf("ParseMilliCPU(%q) = %d, want an error", in, got)
		}
	}
}

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in   string
		want Bytes
		str  string
	}{
		{"64Mi", 64 << 20, "64Mi"},
		{"1Gi", 1 << 30, "1Gi"},
		{"512Ki", 512 << 10, "512Ki"},
		{"2Ti", 2 << 40, "2Ti"},
		{"1024Mi", 1 << 30, "1Gi"},
		{"100M", 100e6, "100000000"},
		{"1K", 1000, "1000"},
		{"1024", 1024, "1Ki"},
		{"1536", 1536, "1536"},
		{"0", 0, "0"},
		{" 4Mi ", 4 << 20, "4Mi"},
	}
	for _, tt := range tests {
		got, err := ParseBytes(tt.in)
		if err != nil || got != tt.want || got.String() != tt.str {
			t.Errorf("ParseBytes(%q) = %d (%q), %v; want %d (%q)", tt.in, got, got, err, tt.want, tt.str)
		}
		if back, err := ParseBytes(got.String()); err != nil || back != got {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", got.String(), back, err, got)
		}
	}
	for _, in := range []string{"", "abc", "Mi", "1.5Gi", "64MiB", "64mi", "9000000000Ti"} {
		if got, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) = %d, want an error", in, got)
		}
	}
}

func TestQuantityJSON(t *testing.T) {
	var r Resources
	if err := json.Unmarshal([]byte(`{"cpu": 0.5, "memory": 1048576, "pids": 10}`), &r); err != nil {
		t.Fatal(err)
	}
	if r != (Resources{CPU: 500, Memory: 1 << 20, Pids: 10}) {
		t.Errorf("numbers decoded to %+v", r)
	}
	js, err := json.Marshal(r)
	if err != nil || string(js) != `{"cpu":"500m","memory":"1Mi","pids":10}` {
		t.Errorf("Marshal = %s, %v", js, err)
	}
	var back Resources
	if err := json.Unmarshal(js, &back); err != nil || back != r {
		t.Errorf("round trip = %+v, %v", back, err)
	}

	var h Health
	if err := json.Unmarshal([]byte(`{"interval": "1m30s"}`), &h); err != nil || h.Interval.D() != 90*time.Second {
		t.Errorf("interval = %v, %v", h.Interval, err)
	}
	if js, _ := json.Marshal(h.Interval); string(js) != `"1m30s"` {
		t.Errorf("Marshal(interval) = %s", js)
	}
}

func TestSameTemplate(t *testing.T) {
	parse := func(s string) AppSpec {
		t.Helper()
		spec, err := ParseAppSpec([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		spec.Default()
		return spec
	}
	a := parse(exampleSpec)
	tests := []struct {
		name string
		b    AppSpec
		same bool
	}{
		{"identical", parse(exampleSpec), true},
		{"replicas changed", parse(strings.Replace(exampleSpec, "replicas: 3", "replicas: 7", 1)), true},
		{"replicas defaulted", parse(strings.Replace(exampleSpec, "replicas: 3", "", 1)), true},
		{"env changed", parse(strings.Replace(exampleSpec, "GREETING: hi", "GREETING: hello", 1)), false},
		{"env added", parse(strings.Replace(exampleSpec, "GREETING: hi", "GREETING: hi, B: c", 1)), false},
		{"image changed", parse(strings.Replace(exampleSpec, "demo:1", "demo:2", 1)), false},
		{"cpu changed", parse(strings.Replace(exampleSpec, "250m", "500m", 1)), false},
		{"cpu written differently", parse(strings.Replace(exampleSpec, "250m", "0.25", 1)), true},
		{"labels changed", parse(strings.Replace(exampleSpec, "team: web", "team: api", 1)), false},
	}
	for _, tt := range tests {
		if got := SameTemplate(a, tt.b); got != tt.same {
			t.Errorf("%s: SameTemplate = %v, want %v", tt.name, got, tt.same)
		}
	}
	// SameTemplate must not clear the callers' replicas.
	if a.Replicas == nil || *a.Replicas != 3 {
		t.Errorf("SameTemplate changed its argument: replicas %v", a.Replicas)
	}
}

// TestStrictness: inputs that a lenient parser would quietly accept.
func TestStrictness(t *testing.T) {
	tests := []struct {
		name, in, field, msg string
	}{
		{"key differing only in case", "name: hello\nimage: x\nNAME: other", "NAME", `did you mean "name"`},
		{"nested key differing in case", "name: hello\nimage: x\nresources: {CPU: 1}", "resources.CPU", `did you mean "resources.cpu"`},
		{"second YAML document", "name: hello\nimage: x\n---\nname: other\nimage: y", "", "several YAML documents"},
		{"control character in a label", "name: hello\nimage: x\nlabels: {a: \"\\x85\"}", "labels.a", "U+0085"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := ParseAppSpec([]byte(tt.in))
			if err == nil {
				spec.Default()
				err = spec.Validate(0)
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field || !strings.Contains(fe.Message, tt.msg) {
				t.Fatalf("error = %#v, want field %q with %q", err, tt.field, tt.msg)
			}
		})
	}
}
