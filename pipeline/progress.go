package pipeline

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"time"
)

// progress prints stage lines a person can follow:
//
//	[guest] resolving the kernel and initramfs
//	        kernel /root/.cache/...
type progress struct {
	w     io.Writer
	mu    sync.Mutex
	start time.Time
}

func newProgress(w io.Writer) *progress {
	if w == nil {
		w = io.Discard
	}
	return &progress{w: w, start: time.Now()}
}

func (p *progress) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format, args...)
}

func (p *progress) stage(name, format string, args ...any) {
	p.printf("[%6.1fs] %-5s %s\n", time.Since(p.start).Seconds(), name, fmt.Sprintf(format, args...))
}

func (p *progress) step(format string, args ...any) {
	p.printf("%15s%s\n", "", fmt.Sprintf(format, args...))
}

func (p *progress) done(format string, args ...any) {
	p.printf("[%6.1fs] done  %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}

// prefixed returns a writer that prints each line it gets, prefixed.
func (p *progress) prefixed(prefix string) io.Writer {
	return &lineWriter{p: p, prefix: prefix}
}

type lineWriter struct {
	p      *progress
	prefix string
	buf    []byte
}

func (l *lineWriter) Write(b []byte) (int, error) {
	l.buf = append(l.buf, b...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		l.p.printf("%15s%s%s\n", "", l.prefix, l.buf[:i])
		l.buf = l.buf[i+1:]
	}
}
