package api

import (
	"encoding/json"
	"reflect"
	"sort"
	"strings"
)

// checkKeys walks decoded JSON next to the Go type it is meant for and
// rejects keys that are not exactly a field's name. encoding/json alone
// would accept "NAME" for "name", and reports a nested unknown field
// without its path.
func checkKeys(v any, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch val := v.(type) {
	case map[string]any:
		if t.Kind() != reflect.Struct {
			return nil // a free-form map (env, labels); types are checked by the decoder
		}
		fields := jsonFields(t)
		keys := make([]string, 0, len(val))
		for k := range val {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			name := join(path, k)
			ft, ok := fields[k]
			if !ok {
				for known := range fields {
					if strings.EqualFold(known, k) {
						return fieldErr(name, "unknown field (did you mean %q?)", join(path, known))
					}
				}
				return fieldErr(name, "unknown field")
			}
			if err := checkKeys(val[k], ft, name); err != nil {
				return err
			}
		}
	case []any:
		if t.Kind() == reflect.Slice {
			for _, item := range val {
				if err := checkKeys(item, t.Elem(), path); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// checkJSONKeys is checkKeys on raw JSON.
func checkJSONKeys(data []byte, t reflect.Type) error {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return nil // the strict decoder reports syntax errors
	}
	return checkKeys(v, t, "")
}
