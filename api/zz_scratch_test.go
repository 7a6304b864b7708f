package api

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
)

func TestScratch4(t *testing.T) {
	var bad []string
	for r := rune(1); r < 0x110000; r++ {
		if r >= 0xD800 && r <= 0xDFFF {
			continue
		}
		in := fmt.Sprintf("name: a\nimage: b\nenv: {A: \"x\\U%08Xy\"}", r)
		s, err := ParseAppSpec([]byte(in))
		if err != nil {
			bad = append(bad, fmt.Sprintf("parse1 %U", r))
			continue
		}
		s.Default()
		if s.Validate(0) != nil {
			continue
		}
		js, _ := json.Marshal(s)
		s2, err := ParseAppSpec(js)
		if err != nil {
			bad = append(bad, fmt.Sprintf("reparse %U: %v", r, err))
			continue
		}
		if !reflect.DeepEqual(s, s2) {
			bad = append(bad, fmt.Sprintf("differ %U: %q", r, s2.Env["A"]))
		}
	}
	for _, b := range bad {
		fmt.Println(b)
	}
}
