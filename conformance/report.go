package conformance

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Counts returns how many checks passed, failed and were skipped.
func (r *Report) Counts() (pass, fail, skip int) {
	for _, res := range r.Results {
		switch res.Status {
		case StatusPass:
			pass++
		case StatusFail:
			fail++
		case StatusSkip:
			skip++
		}
	}
	return pass, fail, skip
}

// WriteTable writes the report as an aligned table, one check a line, and a
// summary line. JSON is the Report itself (encoding/json).
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tSTATUS\tTIME\tREASON")
	for _, res := range r.Results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", res.Name, res.Status, roundDuration(res.Duration), oneLine(res.Reason))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	pass, fail, skip := r.Counts()
	_, err := fmt.Fprintf(w, "provider %s: %d checks, %d passed, %d failed, %d skipped in %s\n",
		r.Provider, len(r.Results), pass, fail, skip, roundDuration(r.Duration))
	return err
}

func roundDuration(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(100 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(time.Millisecond)
	}
	return d
}

// oneLine keeps a table row on one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
