// Package console drives a guest's serial console from a program: it
// waits for output matching a pattern and runs shell commands, the way a
// person at the console would. Tests and the demo use it.
package console

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// Console is the host end of a guest console.
type Console struct {
	in io.Writer // to the guest

	mu     sync.Mutex
	out    bytes.Buffer // everything the guest wrote
	mark   int          // Expect looks at out[mark:]
	notify chan struct{}
	tee    io.Writer
	seq    int
}

// New returns a Console that types into in. Write the guest's console
// output to the Console; tee, if not nil, receives a copy (a log).
func New(in io.Writer, tee io.Writer) *Console {
	return &Console{in: in, tee: tee, notify: make(chan struct{})}
}

// Write records guest output.
func (c *Console) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.out.Write(p)
	close(c.notify)
	c.notify = make(chan struct{})
	c.mu.Unlock()
	if c.tee != nil {
		c.tee.Write(p)
	}
	return len(p), nil
}

// Output returns everything the guest wrote so far.
func (c *Console) Output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.String()
}

// Expect waits until the output after the previous match matches re, and
// returns the submatches. Output up to the end of the match is consumed.
func (c *Console) Expect(ctx context.Context, re *regexp.Regexp) ([]string, error) {
	for {
		c.mu.Lock()
		rest := c.out.Bytes()[c.mark:]
		if loc := re.FindSubmatchIndex(rest); loc != nil {
			var subs []string
			for i := 0; i < len(loc); i += 2 {
				if loc[i] < 0 {
					subs = append(subs, "")
					continue
				}
				subs = append(subs, string(rest[loc[i]:loc[i+1]]))
			}
			c.mark += loc[1]
			c.mu.Unlock()
			return subs, nil
		}
		wait := c.notify
		c.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %q on the console: %w; last output: %q", re, context.Cause(ctx), c.tail(300))
		}
	}
}

func (c *Console) tail(n int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.out.Bytes()
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Send types s into the guest.
func (c *Console) Send(s string) error {
	if _, err := io.WriteString(c.in, s); err != nil {
		return fmt.Errorf("type into the console: %w", err)
	}
	return nil
}

// Run types a shell command and returns its output and exit status. The
// command's output is framed by markers so that echo and prompts are not
// taken for output.
func (c *Console) Run(ctx context.Context, cmd string) (string, int, error) {
	c.mu.Lock()
	c.seq++
	n := c.seq
	c.mu.Unlock()
	begin := fmt.Sprintf("BB-BEGIN-%d", n)
	end := fmt.Sprintf("BB-END-%d", n)
	// The markers are split in the typed line so that the echo of the
	// command line itself never matches them.
	typed := "echo " + quoteSplit(begin) + "; " + cmd + "; echo " + quoteSplit(end) + ":$?\n"
	if err := c.Send(typed); err != nil {
		return "", 0, err
	}
	// Kernel messages can land anywhere on a serial console, even right
	// after a marker: tolerate them there and drop them from the output.
	re := regexp.MustCompile(`(?s)` + regexp.QuoteMeta(begin) + `[^\n]*\n(.*?)` + regexp.QuoteMeta(end) + `:(\d+)`)
	m, err := c.Expect(ctx, re)
	if err != nil {
		return "", 0, fmt.Errorf("run %q: %w", cmd, err)
	}
	status, _ := strconv.Atoi(m[2])
	out := kernelLine.ReplaceAllString(m[1], "")
	return strings.ReplaceAll(out, "\r\n", "\n"), status, nil
}

// kernelLine matches a kernel log line as printk writes it to a console.
var kernelLine = regexp.MustCompile(`(?m)^\[\s*\d+\.\d+\] [^\n]*\n`)

// quoteSplit writes s so that the shell prints s but the typed text does
// not contain it: "BB-END-1" becomes "BB-EN""D-1".
func quoteSplit(s string) string {
	h := len(s) / 2
	return `"` + s[:h] + `""` + s[h:] + `"`
}
