package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	yamlv3 "gopkg.in/yaml.v3"
	"sigs.k8s.io/yaml"
)

// FieldError is a validation failure of one field, named by its path in
// the spec ("resources.memory").
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Message
	}
	return e.Field + ": " + e.Message
}

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// Limits the server applies to every spec.
const (
	MaxReplicas  = 1000
	MinMemory    = 4 << 20
	MaxSpecBytes = 1 << 20
)

// Defaults, applied server-side by Default.
const (
	DefaultReplicas    = 1
	DefaultCPU         = MilliCPU(100)
	DefaultMemory      = Bytes(128 << 20)
	DefaultPids        = 512
	DefaultStopGrace   = 10 * time.Second
	DefaultInterval    = 5 * time.Second
	DefaultTimeout     = 2 * time.Second
	DefaultRetries     = 3
	DefaultStartPeriod = 10 * time.Second
	DefaultWakeTimeout = 30 * time.Second
	DefaultReqTimeout  = 60 * time.Second
)

// ParseAppSpec reads one app spec from YAML or JSON (JSON is YAML).
// Unknown fields and duplicate keys are errors.
func ParseAppSpec(data []byte) (AppSpec, error) {
	var spec AppSpec
	if len(data) > MaxSpecBytes {
		return spec, fieldErr("", "spec is larger than %d bytes", MaxSpecBytes)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return spec, fieldErr("", "empty spec")
	}
	if err := singleDocument(data); err != nil {
		return spec, err
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return spec, fieldErr("", "malformed YAML: %v", strings.TrimPrefix(err.Error(), "error converting YAML to JSON: "))
	}
	if err := DecodeStrict(js, &spec); err != nil {
		return spec, err
	}
	return spec, nil
}

// DecodeStrict decodes one JSON value into v, rejecting unknown fields and
// trailing data, and turns decoding failures into FieldErrors.
func DecodeStrict(data []byte, v any) error {
	if err := checkJSONKeys(data, reflect.TypeOf(v)); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fieldErr("", "unexpected data after the spec")
	}
	return nil
}

func decodeError(err error) error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		if strings.HasPrefix(typeErr.Value, "!") { // our own types' messages
			return fieldErr(typeErr.Field, "%s", typeErr.Value[1:])
		}
		return fieldErr(typeErr.Field, "want %s, got %s", kindName(typeErr.Type.Kind().String()), typeErr.Value)
	case errors.As(err, &syntaxErr):
		return fieldErr("", "malformed JSON at byte %d: %v", syntaxErr.Offset, err)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return fieldErr(name, "unknown field")
	}
	return fieldErr("", "%v", err)
}

// singleDocument rejects a file of several YAML documents, which would
// otherwise be read as its first one alone.
func singleDocument(data []byte) error {
	dec := yamlv3.NewDecoder(bytes.NewReader(data))
	docs := 0
	for {
		var node yamlv3.Node
		err := dec.Decode(&node)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil // the converter reports the syntax error
		}
		if docs++; docs > 1 {
			return fieldErr("", "the file holds several YAML documents; one app spec per file")
		}
	}
	return nil
}

func kindName(k string) string {
	switch k {
	case "int", "int64", "int32":
		return "an integer"
	case "slice":
		return "a list"
	case "map":
		return "a mapping"
	case "struct", "ptr":
		return "a mapping"
	}
	return "a " + k
}

// Default fills in every optional field so that the stored spec says
// exactly what runs.
func (s *AppSpec) Default() {
	if s.Replicas == nil {
		s.Replicas = ptr(DefaultReplicas)
	}
	if s.Resources.CPU == 0 {
		s.Resources.CPU = DefaultCPU
	}
	if s.Resources.Memory == 0 {
		s.Resources.Memory = DefaultMemory
	}
	if s.Resources.Pids == 0 {
		s.Resources.Pids = DefaultPids
	}
	if s.StopGrace == nil {
		s.StopGrace = ptr(Duration(DefaultStopGrace))
	}
	if s.Init == nil {
		s.Init = ptr(true)
	}
	for i, r := range s.Routes {
		s.Routes[i] = strings.ToLower(r)
	}
	if len(s.Routes) > 0 && s.RequestTimeout == nil {
		s.RequestTimeout = ptr(Duration(DefaultReqTimeout))
	}
	if s.Idle != nil && s.Idle.WakeTimeout == nil {
		s.Idle.WakeTimeout = ptr(Duration(DefaultWakeTimeout))
	}
	if s.Placement != nil {
		s.Placement.Default()
	}
	if s.Update != nil {
		s.Update.Default()
	}
	if s.Health == nil && s.Port > 0 {
		s.Health = &Health{TCP: true}
	}
	if h := s.Health; h != nil {
		if h.Interval == nil {
			h.Interval = ptr(Duration(DefaultInterval))
		}
		if h.Timeout == nil {
			h.Timeout = ptr(Duration(DefaultTimeout))
		}
		if h.Retries == 0 {
			h.Retries = DefaultRetries
		}
		if h.StartPeriod == nil {
			h.StartPeriod = ptr(Duration(DefaultStartPeriod))
		}
	}
}

var (
	dnsLabel  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	envName   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	imageRef  = regexp.MustCompile(`^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$`)
	labelName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$`)
)

// MaxNameLen leaves room for "-<index>" in instance names within a DNS label.
const MaxNameLen = 50

// Validate checks a defaulted spec. maxMemory, when > 0, is the largest
// node's memory: a bigger instance could never be placed.
func (s *AppSpec) Validate(maxMemory Bytes) error {
	switch {
	case s.Name == "":
		return fieldErr("name", "required")
	case len(s.Name) > MaxNameLen || !dnsLabel.MatchString(s.Name):
		return fieldErr("name", "%q is not a DNS label of at most %d characters (a-z, 0-9, '-', not at either end)", s.Name, MaxNameLen)
	case s.Image == "":
		return fieldErr("image", "required")
	case !imageRef.MatchString(s.Image):
		return fieldErr("image", "%q is not a valid image reference", s.Image)
	case s.Port < 0 || s.Port > 65535:
		return fieldErr("port", "%d is not a TCP port (1-65535)", s.Port)
	case s.Replicas != nil && (*s.Replicas < 0 || *s.Replicas > MaxReplicas):
		return fieldErr("replicas", "%d is out of range 0-%d", *s.Replicas, MaxReplicas)
	case s.Resources.CPU < 1 || s.Resources.CPU > 1024*1000:
		return fieldErr("resources.cpu", "%s is out of range 1m-1024", s.Resources.CPU)
	case s.Resources.Memory < MinMemory:
		return fieldErr("resources.memory", "%s is below the minimum of %s", s.Resources.Memory, Bytes(MinMemory))
	case maxMemory > 0 && s.Resources.Memory > maxMemory:
		return fieldErr("resources.memory", "%s is more than any node has (largest: %s)", s.Resources.Memory, maxMemory.Human())
	case s.Resources.Pids < 1 || s.Resources.Pids > 1<<22:
		return fieldErr("resources.pids", "%d is out of range 1-%d", s.Resources.Pids, 1<<22)
	case s.StopGrace != nil && (*s.StopGrace < 0 || s.StopGrace.D() > time.Hour):
		return fieldErr("stop_grace", "%s is out of range 0s-1h", s.StopGrace)
	}
	for i, a := range s.Command {
		if err := plainText(fmt.Sprintf("command[%d]", i), a); err != nil {
			return err
		}
	}
	for _, k := range sortedKeys(s.Env) {
		if !envName.MatchString(k) {
			return fieldErr("env."+k, "%q is not a valid environment variable name", k)
		}
		if err := plainText("env."+k, s.Env[k]); err != nil {
			return err
		}
	}
	for _, k := range sortedKeys(s.Labels) {
		if !labelName.MatchString(k) || strings.HasPrefix(k, "berth.") {
			return fieldErr("labels."+k, "%q is not a valid label name (letters, digits, . _ / -; the berth. prefix is reserved)", k)
		}
		if len(s.Labels[k]) > 1024 {
			return fieldErr("labels."+k, "value is longer than 1024 characters")
		}
		if err := plainText("labels."+k, s.Labels[k]); err != nil {
			return err
		}
	}
	if h := s.Health; h != nil {
		if err := h.validate(s.Port); err != nil {
			return err
		}
	}
	if p := s.Placement; p != nil {
		if err := p.Validate(); err != nil {
			return err
		}
	}
	if err := s.validateRouting(); err != nil {
		return err
	}
	return s.validateRollout()
}

var hostName = regexp.MustCompile(`^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func (s *AppSpec) validateRouting() error {
	seen := map[string]bool{}
	for i, r := range s.Routes {
		field := fmt.Sprintf("routes[%d]", i)
		switch {
		case len(r) > 253 || !hostName.MatchString(r):
			return fieldErr(field, "%q is not a host name (e.g. app.example.com, or *.app.example.com for any name under it)", r)
		case seen[r]:
			return fieldErr(field, "%q is listed twice", r)
		case s.Port == 0:
			return fieldErr("routes", "routes need port to be set: the gateway sends requests to it")
		}
		seen[r] = true
	}
	if t := s.RequestTimeout; t != nil && (*t < 0 || t.D() > 24*time.Hour) {
		return fieldErr("request_timeout", "%s is out of range 0s-24h", t)
	}
	if s.Idle != nil {
		switch {
		case len(s.Routes) == 0:
			return fieldErr("idle", "an idle policy needs routes: apps are woken by a request through the gateway")
		case s.Idle.StopAfter.D() < time.Second || s.Idle.StopAfter.D() > 30*24*time.Hour:
			return fieldErr("idle.stop_after", "%s is out of range 1s-720h", s.Idle.StopAfter)
		case s.Idle.WakeTimeout != nil && (s.Idle.WakeTimeout.D() < time.Second || s.Idle.WakeTimeout.D() > 10*time.Minute):
			return fieldErr("idle.wake_timeout", "%s is out of range 1s-10m", s.Idle.WakeTimeout)
		}
	}
	return nil
}

func (h *Health) validate(port int) error {
	kinds := 0
	if h.HTTP != "" {
		kinds++
		if !strings.HasPrefix(h.HTTP, "/") || strings.ContainsAny(h.HTTP, " \t\r\n") {
			return fieldErr("health.http", "%q is not a path starting with /", h.HTTP)
		}
		if err := plainText("health.http", h.HTTP); err != nil {
			return err
		}
	}
	if h.TCP {
		kinds++
	}
	if len(h.Exec) > 0 {
		kinds++
		for i, a := range h.Exec {
			if err := plainText(fmt.Sprintf("health.exec[%d]", i), a); err != nil {
				return err
			}
		}
	}
	switch {
	case kinds == 0:
		return fieldErr("health", "set one of http, tcp or exec")
	case kinds > 1:
		return fieldErr("health", "set only one of http, tcp or exec")
	case (h.HTTP != "" || h.TCP) && port == 0:
		return fieldErr("health", "http and tcp checks need port to be set")
	case h.Interval != nil && (h.Interval.D() < 100*time.Millisecond || h.Interval.D() > time.Hour):
		return fieldErr("health.interval", "%s is out of range 100ms-1h", h.Interval)
	case h.Timeout != nil && (h.Timeout.D() < 10*time.Millisecond || h.Timeout.D() > time.Hour):
		return fieldErr("health.timeout", "%s is out of range 10ms-1h", h.Timeout)
	case h.Retries < 0 || h.Retries > 100:
		return fieldErr("health.retries", "%d is out of range 0-100 (0: the default)", h.Retries)
	case h.StartPeriod != nil && (*h.StartPeriod < 0 || h.StartPeriod.D() > time.Hour):
		return fieldErr("health.start_period", "%s is out of range 0s-1h", h.StartPeriod)
	}
	return nil
}

// plainText rejects NUL and the control characters that YAML cannot carry,
// so that every stored spec can be written back as YAML or JSON and read again.
func plainText(field, v string) error {
	for _, r := range v {
		if r == 0 || (r >= 0x7f && r <= 0x9f) || r == 0xfffe || r == 0xffff {
			return fieldErr(field, "contains the control character %U", r)
		}
	}
	return nil
}

// SameTemplate reports whether two defaulted specs make identical
// instances, so that a change of replicas or routing needs no rolling update.
func SameTemplate(a, b AppSpec) bool {
	// Neither replicas nor routing change what one container is.
	a.Replicas, b.Replicas = nil, nil
	a.Routes, b.Routes = nil, nil
	a.RequestTimeout, b.RequestTimeout = nil, nil
	a.Idle, b.Idle = nil, nil
	// Nor how updates go and how much history is kept.
	a.Update, b.Update = nil, nil
	a.HistoryLimit, b.HistoryLimit = nil, nil
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

// ReplicaCount is Replicas with the default applied.
func (s *AppSpec) ReplicaCount() int {
	if s.Replicas == nil {
		return DefaultReplicas
	}
	return *s.Replicas
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func ptr[T any](v T) *T { return &v }
