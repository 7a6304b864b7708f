package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"
)

// FuzzParseAppSpec feeds arbitrary bytes to ParseAppSpec. Whatever the
// input: no panic, and every error is a *FieldError. For a spec that parses,
// Default and Validate must not panic; for one that also validates, its
// JSON (what the server stores and `berth get -o json` prints) must parse
// back to the same spec, already defaulted and still valid.
func FuzzParseAppSpec(f *testing.F) {
	for _, s := range []string{
		exampleSpec,
		"name: a\nimage: b",
		"name: a\nimage: b\nport: 80",
		`{"name":"hello","image":"berth/demo:1","replicas":2,"resources":{"cpu":0.5,"memory":"1Gi"}}`,
		"name: worker\nimage: registry.example.com:5000/team/worker:v2\ncommand:\n  - /bin/sh\n  - -c\n  - \"echo hi\\tthere\\n\"\nreplicas: 0\ninit: false\nstop_grace: 1m30s\n",
		"name: cron\nimage: alpine\nhealth:\n  exec: [/bin/true]\n  interval: 500ms\n  timeout: 100ms\n  retries: 1\n  start_period: 0s\nresources:\n  cpu: 1\n  memory: 4Mi\n  pids: 1\n",
		"name: tcp\nimage: nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\nport: 65535\nhealth: {tcp: true}\nlabels: {team.io/owner: ops, tier: \"1\"}\nenv: {A_B: \"\", _X: 'quoted ''single''', U: \"\\u00e9\"}\n",
		"name: bad\nimage: x\nresources: {cpu: -1, memory: 1Mi}\nstop_grace: -1s",
		"name: bad\nimage: x\nhealth: {http: healthz, tcp: true}",
		"name: a\nimage: b\nenv: {}\ncommand: []\nlabels: {}",
		"- a\n- b",
		"name: &x a\nimage: *x",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := ParseAppSpec(data)
		if err != nil {
			mustBeFieldError(t, err)
			return
		}
		spec.Default()
		if err := spec.Validate(0); err != nil {
			mustBeFieldError(t, err)
			return
		}
		js, err := json.Marshal(spec)
		if err != nil {
			t.Fatalf("Marshal of a valid spec: %v", err)
		}
		again, err := ParseAppSpec(js)
		if err == nil && !reflect.DeepEqual(emptyToNil(again), emptyToNil(spec)) {
			err = fmt.Errorf("round trip changed the spec:\nfirst %+v\nagain %+v", spec, again)
		}
		if err != nil {
			t.Fatalf("the JSON of a valid spec does not parse back:\ninput %q\njson  %s\nerror %v", data, js, err)
		}
		// The stored form is complete: defaulting it again changes nothing.
		defaulted := again
		defaulted.Default()
		if !reflect.DeepEqual(defaulted, again) {
			t.Fatalf("Default changed a defaulted spec:\njson %s\nafter %+v", js, defaulted)
		}
		if err := again.Validate(0); err != nil {
			t.Fatalf("round-tripped spec no longer valid: %v\njson %s", err, js)
		}
	})
}

func mustBeFieldError(t *testing.T, err error) {
	t.Helper()
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v is a %T, want *FieldError", err, err)
	}
}

// emptyToNil makes empty lists and maps nil. JSON drops them (omitempty),
// so `env: {}` comes back as no env at all, which means the same thing.
func emptyToNil(s AppSpec) AppSpec {
	if len(s.Command) == 0 {
		s.Command = nil
	}
	if len(s.Env) == 0 {
		s.Env = nil
	}
	if len(s.Labels) == 0 {
		s.Labels = nil
	}
	if s.Health != nil && len(s.Health.Exec) == 0 {
		h := *s.Health
		h.Exec = nil
		s.Health = &h
	}
	return s
}
