package controller

import (
	"maps"
	"slices"
	"testing"

	"berth/api"
)

// The digests in use are the apps' and the instances' (an old revision's
// instance still running during a rolling update keeps its image).
func TestDigestsInUse(t *testing.T) {
	apps := []api.App{{ImageDigest: "sha256:new"}, {}, {ImageDigest: "sha256:other"}}
	insts := []api.Instance{{ImageDigest: "sha256:new"}, {ImageDigest: "sha256:old"}, {}}
	got := slices.Sorted(maps.Keys(digestsInUse(apps, insts)))
	if want := []string{"sha256:new", "sha256:old", "sha256:other"}; !slices.Equal(got, want) {
		t.Errorf("digestsInUse = %v, want %v", got, want)
	}
}
