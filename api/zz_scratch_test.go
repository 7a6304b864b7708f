package api

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestScratch5(t *testing.T) {
	files, _ := filepath.Glob("/root/.cache/go-build/fuzz/berth/api/FuzzParseAppSpec/*")
	for _, f := range files {
		b, _ := os.ReadFile(f)
		lines := strings.SplitN(string(b), "\n", 2)
		q := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(lines[1]), "[]byte("), ")")
		s, err := strconv.Unquote(q)
		if err != nil { continue }
		spec, err := ParseAppSpec([]byte(s))
		if err != nil { continue }
		spec.Default()
		if spec.Validate(0) != nil { continue }
		fmt.Printf("%d %s %q\n", len(s), filepath.Base(f), s)
	}
}
