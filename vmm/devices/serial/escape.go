package serial

import "io"

// EscapeChar is the console escape prefix, Ctrl-A.
const EscapeChar = 0x01

// Escape filters console input for escape sequences, as QEMU's -nographic
// console does: Ctrl-A x calls the quit function, Ctrl-A Ctrl-A passes one
// literal Ctrl-A, and Ctrl-A followed by any other byte is dropped along
// with that byte. Wrap the host's input in an Escape before handing it to
// New. An Escape is not safe for concurrent Reads.
type Escape struct {
	r       io.Reader
	quit    func()
	pending bool // the last byte seen was an unpaired Ctrl-A
}

// NewEscape returns a reader of r's bytes that calls quit, from within
// Read, each time Ctrl-A x arrives; Read goes on filtering afterwards.
func NewEscape(r io.Reader, quit func()) *Escape {
	return &Escape{r: r, quit: quit}
}

// Read reads from the underlying reader and removes escape sequences. It
// returns 0 bytes only with an error.
func (e *Escape) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, err := e.r.Read(p)
		out := 0
		for _, b := range p[:n] {
			switch {
			case e.pending:
				e.pending = false
				switch b {
				case EscapeChar:
					p[out] = b
					out++
				case 'x':
					if e.quit != nil {
						e.quit()
					}
				}
			case b == EscapeChar:
				e.pending = true
			default:
				p[out] = b
				out++
			}
		}
		if out > 0 || err != nil {
			return out, err
		}
	}
}
