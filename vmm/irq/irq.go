// Package irq defines how devices signal interrupts.
package irq

// Line is one interrupt input of the machine's interrupt controllers.
// SetLevel(true) asserts it, SetLevel(false) deasserts it. Implementations
// are safe for concurrent use.
type Line interface {
	SetLevel(high bool)
}

// LineFunc adapts a function to Line.
type LineFunc func(high bool)

// SetLevel calls f(high).
func (f LineFunc) SetLevel(high bool) { f(high) }
