// Package testenv holds the one rule for tests that need something of the
// machine (a Docker engine, git): where it is missing they skip, but under
// CI=true they fail, since CI's set-up must have provided it.
package testenv

import (
	"os"
	"testing"
)

// Missing stops t because what it needs is missing, saying why.
func Missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(why + " (CI=true: a failure, not a skip)")
	}
	t.Skip(why)
}
