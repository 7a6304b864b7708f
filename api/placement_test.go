package api

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

const placementBase = "name: hello\nimage: berth/demo:1\n"

func TestPlacementParseAndDefault(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want *Placement
	}{
		{"absent stays nil", "", nil},
		{"empty gets the defaults", "placement: {}", &Placement{Spread: "node", Strategy: "spread"}},
		{
			"everything",
			"placement:\n  constraints: [\"zone == a\", \"disk!=hdd\"]\n  spread: zone\n  strategy: binpack\n  max_per_node: 2\n",
			&Placement{Constraints: []string{"zone == a", "disk!=hdd"}, Spread: "zone", Strategy: "binpack", MaxPerNode: 2},
		},
		{"empty constraints become nil", "placement: {constraints: []}", &Placement{Spread: "node", Strategy: "spread"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := ParseAppSpec([]byte(placementBase + tt.in))
			if err != nil {
				t.Fatal(err)
			}
			spec.Default()
			if !reflect.DeepEqual(spec.Placement, tt.want) {
				t.Fatalf("placement = %+v, want %+v", spec.Placement, tt.want)
			}
			if err := spec.Validate(0); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			// What the server stores reads back the same, and is complete.
			js, err := json.Marshal(spec)
			if err != nil {
				t.Fatal(err)
			}
			again, err := ParseAppSpec(js)
			if err != nil {
				t.Fatalf("stored form %s does not parse: %v", js, err)
			}
			defaulted := again
			defaulted.Default()
			if !reflect.DeepEqual(again, spec) || !reflect.DeepEqual(defaulted, spec) {
				t.Fatalf("round trip through %s changed the spec: %+v", js, again.Placement)
			}
		})
	}
}

func TestPlacementErrors(t *testing.T) {
	tests := []struct {
		name, in, field, msg string
	}{
		{"single =", `placement: {constraints: ["zone == a", "zone = a"]}`, "placement.constraints[1]",
			`"zone = a" is not "<label> == <value>" or "<label> != <value>"`},
		{"no operator", `placement: {constraints: [zone]}`, "placement.constraints[0]", `"zone" is not "<label> == <value>"`},
		{"empty", `placement: {constraints: [""]}`, "placement.constraints[0]", `"" is not`},
		{"missing value", `placement: {constraints: ["zone =="]}`, "placement.constraints[0]", "is not"},
		{"two operators", `placement: {constraints: ["a == b == c"]}`, "placement.constraints[0]", "is not"},
		{"space in value", `placement: {constraints: ["zone == a b"]}`, "placement.constraints[0]", "is not"},
		{"other operator", `placement: {constraints: ["zone >= a"]}`, "placement.constraints[0]", "is not"},
		{"bad label", `placement: {constraints: ["-zone == a"]}`, "placement.constraints[0]", `"-zone" is not a valid label name`},
		{"bad value", `placement: {constraints: ["zone == a*"]}`, "placement.constraints[0]", `"a*" is not a valid label value`},
		{"too many", "placement: {constraints: [" + strings.Repeat(`"a == b",`, MaxConstraints+1) + "]}", "placement.constraints", "at most 32"},
		{"not a list", `placement: {constraints: "zone == a"}`, "placement.constraints", "want a list"},
		{"bad strategy", `placement: {strategy: pack}`, "placement.strategy", `"pack" is not spread or binpack`},
		{"bad spread", `placement: {spread: "zone a"}`, "placement.spread", `"zone a" is not a node label name`},
		{"negative max_per_node", `placement: {max_per_node: -1}`, "placement.max_per_node", "must be >= 0"},
		{"max_per_node not a number", `placement: {max_per_node: one}`, "placement.max_per_node", "want an integer"},
		{"unknown key", `placement: {spreed: zone}`, "placement.spreed", "unknown field"},
		{"key in another case", `placement: {Spread: zone}`, "placement.Spread", `did you mean "placement.spread"`},
		{"not a mapping", `placement: [zone]`, "placement", "want a mapping"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := ParseAppSpec([]byte(placementBase + tt.in))
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

func TestParseConstraint(t *testing.T) {
	tests := []struct {
		in   string
		want Constraint
	}{
		{"zone == a", Constraint{"zone", "a", true}},
		{"zone==a", Constraint{"zone", "a", true}},
		{"  disk !=hdd ", Constraint{"disk", "hdd", false}},
		{"topology.example.com/zone == eu-west_1.b", Constraint{"topology.example.com/zone", "eu-west_1.b", true}},
		{"1 != 2", Constraint{"1", "2", false}},
	}
	for _, tt := range tests {
		got, err := ParseConstraint(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseConstraint(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
		if again, err := ParseConstraint(got.String()); err != nil || again != got {
			t.Errorf("canonical form %q of %q parses to %+v, %v", got.String(), tt.in, again, err)
		}
	}
	if s := (Constraint{"zone", "a", true}).String(); s != "zone == a" {
		t.Errorf("String = %q", s)
	}
	if s := (Constraint{"disk", "hdd", false}).String(); s != "disk != hdd" {
		t.Errorf("String = %q", s)
	}
}

func TestConstraintHolds(t *testing.T) {
	labels := map[string]string{"zone": "a", "empty": ""}
	tests := []struct {
		c    Constraint
		want bool
	}{
		{Constraint{"zone", "a", true}, true},
		{Constraint{"zone", "b", true}, false},
		{Constraint{"zone", "a", false}, false},
		{Constraint{"zone", "b", false}, true},
		{Constraint{"disk", "ssd", true}, false}, // no such label: == fails
		{Constraint{"disk", "ssd", false}, true}, // and != holds
		{Constraint{"empty", "x", false}, true},
	}
	for _, tt := range tests {
		if got := tt.c.Holds(labels); got != tt.want {
			t.Errorf("%s on %v = %v, want %v", tt.c, labels, got, tt.want)
		}
	}
	if !(Constraint{"zone", "a", false}).Holds(nil) {
		t.Error("!= must hold on a node without labels")
	}
}

// A change of placement is a change of the template: the instances are
// replaced one at a time, and so re-placed under the new rules.
func TestPlacementIsTemplate(t *testing.T) {
	a, _ := ParseAppSpec([]byte(placementBase))
	b, _ := ParseAppSpec([]byte(placementBase + "placement: {spread: zone}"))
	a.Default()
	b.Default()
	if SameTemplate(a, b) {
		t.Error("adding a placement kept the template")
	}
}
