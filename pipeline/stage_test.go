package pipeline

import (
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/console"
)

func TestExpectEither(t *testing.T) {
	ready := regexp.MustCompile(`(?m)^READY$`)
	tests := []struct {
		name         string
		first, other string
		wantMatch    bool
	}{
		{"on the first console", "boot\nREADY\n", "", true},
		{"on the other console", "kernel messages\n", "READY\n", true},
		{"on neither", "kernel messages\n", "NOT READY\n", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := console.New(nil, nil), console.New(nil, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			go func() {
				a.Write([]byte(tc.first))
				b.Write([]byte(tc.other))
			}()
			err := expectEither(ctx, ready, a, b)
			if (err == nil) != tc.wantMatch {
				t.Errorf("expectEither: %v, want a match: %v", err, tc.wantMatch)
			}
		})
	}
}
