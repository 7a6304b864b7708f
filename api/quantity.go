package api

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// MilliCPU is a CPU amount in thousandths of a core. It is written "250m",
// "0.5" or "2".
type MilliCPU int64

func ParseMilliCPU(s string) (MilliCPU, error) {
	s = strings.TrimSpace(s)
	if strings.HasSuffix(s, "m") {
		n, err := strconv.ParseInt(strings.TrimSuffix(s, "m"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("cpu %q: want millicores like 250m or cores like 0.5", s)
		}
		return MilliCPU(n), nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || math.Abs(f) > 1e9 {
		return 0, fmt.Errorf("cpu %q: want millicores like 250m or cores like 0.5", s)
	}
	return MilliCPU(math.Round(f * 1000)), nil
}

func (c MilliCPU) String() string {
	if c%1000 == 0 {
		return strconv.FormatInt(int64(c)/1000, 10)
	}
	return strconv.FormatInt(int64(c), 10) + "m"
}

func (c MilliCPU) MarshalJSON() ([]byte, error) { return json.Marshal(c.String()) }

func (c *MilliCPU) UnmarshalJSON(b []byte) error {
	s, err := stringOrNumber(b)
	if err != nil {
		return ownTypeError(err, c)
	}
	v, err := ParseMilliCPU(s)
	if err != nil {
		return ownTypeError(err, c)
	}
	*c = v
	return nil
}

// Bytes is an amount of memory, written "64Mi", "1Gi", "512Ki", "100M" or a
// plain number of bytes.
type Bytes int64

var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40},
	{"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12},
}

func ParseBytes(s string) (Bytes, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	num := s
	for _, u := range byteUnits {
		if strings.HasSuffix(s, u.suffix) {
			mult, num = u.mult, strings.TrimSuffix(s, u.suffix)
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("memory %q: want a size like 64Mi, 1Gi or bytes", s)
	}
	if n > math.MaxInt64/mult || n < math.MinInt64/mult {
		return 0, fmt.Errorf("memory %q: too large", s)
	}
	return Bytes(n * mult), nil
}

func (b Bytes) String() string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}} {
		if b != 0 && int64(b)%u.mult == 0 {
			return strconv.FormatInt(int64(b)/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// Human rounds to the largest binary unit for display: "23.5Gi".
func (b Bytes) Human() string {
	v := float64(b)
	for _, unit := range []string{"", "Ki", "Mi", "Gi", "Ti"} {
		if v < 1024 || unit == "Ti" {
			if v == float64(int64(v)) {
				return fmt.Sprintf("%d%s", int64(v), unit)
			}
			return fmt.Sprintf("%.1f%s", v, unit)
		}
		v /= 1024
	}
	return b.String()
}

func (b Bytes) MarshalJSON() ([]byte, error) { return json.Marshal(b.String()) }

func (b *Bytes) UnmarshalJSON(data []byte) error {
	s, err := stringOrNumber(data)
	if err != nil {
		return ownTypeError(err, b)
	}
	v, err := ParseBytes(s)
	if err != nil {
		return ownTypeError(err, b)
	}
	*b = v
	return nil
}

// Duration is a time.Duration written as "2s", "1m30s".
type Duration time.Duration

func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return ownTypeError(fmt.Errorf("want a duration string like \"2s\""), d)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return ownTypeError(fmt.Errorf("duration %q: want a form like 500ms, 2s or 1m30s", s), d)
	}
	*d = Duration(v)
	return nil
}

// ownTypeError reports a bad value of one of our types so that the JSON
// decoder adds the field's path to it (see decodeError).
func ownTypeError(err error, v any) error {
	return &json.UnmarshalTypeError{Value: "!" + err.Error(), Type: reflect.TypeOf(v).Elem()}
}

// stringOrNumber accepts `"250m"` and `0.5` alike.
func stringOrNumber(b []byte) (string, error) {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		return s, nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return "", fmt.Errorf("want a string or a number")
	}
	return n.String(), nil
}

// Count is n and the noun, plural unless n is 1: "1 replica", "3 replicas".
func Count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
