package api

import (
	"strings"
	"testing"
)

// The largest node's memory is named the way `berth nodes` shows it, not
// in the exact unit it happens to divide by.
func TestMemoryAboveLargestNodeIsHuman(t *testing.T) {
	spec, err := ParseAppSpec([]byte("name: a\nimage: x\nresources: {memory: 30Gi}\n"))
	if err != nil {
		t.Fatal(err)
	}
	spec.Default()
	err = spec.Validate(24684084 << 10)
	want := "resources.memory: 30Gi is more than any node has (largest: 23.5Gi)"
	if err == nil || err.Error() != want {
		t.Fatalf("Validate: %v, want %q", err, want)
	}
	if strings.Contains(err.Error(), "Ki") {
		t.Errorf("exact Ki in %q", err)
	}
}
