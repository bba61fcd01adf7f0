// Package jsonstrict decodes untrusted JSON strictly.
package jsonstrict

import (
	"bytes"
	"encoding/json"
	"errors"
)

// Decode decodes one JSON value from b into v, refusing fields v does not
// have and anything after the value.
func Decode(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("data after the JSON value")
	}
	return nil
}
