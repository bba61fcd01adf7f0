package commands

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
)

// WriteAccounting prints, for every inventory entry the machine offered and
// every address it denied, how often the guest used it and when last.
func WriteAccounting(w io.Writer, buses []*bus.Bus, start time.Time) {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ENTRY\tSPACE\tRANGE\tCLASS\tREADS\tWRITES\tLAST (after start)")
	last := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Sub(start).Round(time.Millisecond).String()
	}
	for _, b := range buses {
		for _, s := range b.Stats() {
			e := s.Entry
			fmt.Fprintf(tw, "%s\t%s\t%#x-%#x\t%s\t%d\t%d\t%s\n", e.ID, e.Space, e.Base, e.End()-1, e.Class, s.Reads, s.Writes, last(s.Last))
		}
	}
	for _, b := range buses {
		for _, s := range b.Denied() {
			fmt.Fprintf(tw, "(denied)\t%s\t%#x\t-\t%d\t%d\t%s\n", b.Space(), s.Addr, s.Reads, s.Writes, last(s.Last))
		}
	}
	tw.Flush()
}
