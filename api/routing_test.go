package api

import (
	"errors"
	"strings"
	"testing"
)

func TestRoutingSpec(t *testing.T) {
	base := "name: web\nimage: berth/demo:1\nport: 8080\n"
	good := []string{
		base + "routes: [web.localtest.me, \"*.web.test\"]",
		base + "routes: [Web.LocalTest.ME]", // lowercased
		base + "routes: [a.test]\nidle: {stop_after: 10m, wake_timeout: 30s}",
		base + "routes: [a.test]\nrequest_timeout: 0s",
	}
	for _, in := range good {
		spec, err := ParseAppSpec([]byte(in))
		if err == nil {
			spec.Default()
			err = spec.Validate(0)
		}
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		for _, r := range spec.Routes {
			if r != strings.ToLower(r) {
				t.Errorf("route %q not lowercased", r)
			}
		}
		if spec.Idle != nil && spec.Idle.WakeTimeout == nil {
			t.Errorf("%q: wake_timeout not defaulted", in)
		}
	}
	bad := []struct{ in, field string }{
		{base + "routes: [\"bad host\"]", "routes[0]"},
		{base + "routes: [\"a.*.test\"]", "routes[0]"},
		{base + "routes: [\"-a.test\"]", "routes[0]"},
		{base + "routes: [a.test, A.TEST]", "routes[1]"},
		{"name: web\nimage: x\nroutes: [a.test]", "routes"},
		{base + "idle: {stop_after: 10m}", "idle"},
		{base + "routes: [a.test]\nidle: {stop_after: 10ms}", "idle.stop_after"},
		{base + "routes: [a.test]\nidle: {stop_after: 1m, wake_timeout: 1h}", "idle.wake_timeout"},
		{base + "routes: [a.test]\nidle: {stop_after: 1m, after: 2}", "idle.after"},
		{base + "routes: [a.test]\nrequest_timeout: -1s", "request_timeout"},
	}
	for _, c := range bad {
		spec, err := ParseAppSpec([]byte(c.in))
		if err == nil {
			spec.Default()
			err = spec.Validate(0)
		}
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("%q: error %v, want field %q", c.in, err, c.field)
		}
	}
}

func TestRoutingIsNotTemplate(t *testing.T) {
	a, _ := ParseAppSpec([]byte("name: web\nimage: x\nport: 80\nroutes: [a.test]"))
	b, _ := ParseAppSpec([]byte("name: web\nimage: x\nport: 80\nroutes: [b.test]\nidle: {stop_after: 1m}\nrequest_timeout: 5s"))
	a.Default()
	b.Default()
	if !SameTemplate(a, b) {
		t.Fatal("a change of routes, idle or request_timeout must not replace instances")
	}
}
