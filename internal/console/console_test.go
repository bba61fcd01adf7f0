package console

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"
)

// fakeShell echoes each typed line, like a tty, and runs it the way
// `sh -c` would for the commands the test uses.
func fakeShell(t *testing.T, in io.Reader, out io.Writer) {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintf(out, "%s\r\n$ ", line) // echo, then a prompt
		for _, part := range strings.Split(line, "; ") {
			switch {
			case strings.HasPrefix(part, "echo "):
				arg := strings.ReplaceAll(strings.TrimPrefix(part, "echo "), `"`, "")
				arg = strings.ReplaceAll(arg, "$?", "3")
				fmt.Fprintf(out, "%s\r\n", arg)
			case part == "greet":
				fmt.Fprint(out, "hello\r\n[   20.303278] clocksource: switched\r\nworld\r\n")
			}
		}
	}
}

func TestRunFramesOutput(t *testing.T) {
	pr, pw := io.Pipe()
	c := New(pw, nil)
	go fakeShell(t, pr, c)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, status, err := c.Run(ctx, "greet")
	if err != nil {
		t.Fatal(err)
	}
	if out != "hello\nworld\n" || status != 3 {
		t.Errorf("Run = %q, %d; want the command's output only and its status", out, status)
	}
	// The echo of the typed line never counts as output.
	if strings.Contains(out, "BB-") {
		t.Errorf("output contains a marker: %q", out)
	}
}

func TestExpectTimesOut(t *testing.T) {
	c := New(io.Discard, nil)
	c.Write([]byte("booting...\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.Expect(ctx, regexp.MustCompile(`login:`))
	if err == nil || !strings.Contains(err.Error(), "booting") {
		t.Errorf("Expect = %v, want a timeout naming the last output", err)
	}
}

func TestExpectConsumes(t *testing.T) {
	c := New(io.Discard, nil)
	c.Write([]byte("cpus=1\ncpus=2\n"))
	ctx := context.Background()
	for _, want := range []string{"1", "2"} {
		m, err := c.Expect(ctx, regexp.MustCompile(`cpus=(\d)`))
		if err != nil || m[1] != want {
			t.Fatalf("Expect = %v, %v; want cpus=%s", m, err, want)
		}
	}
}
