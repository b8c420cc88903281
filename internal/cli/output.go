package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/compute-sdk/compute"
	"sigs.k8s.io/yaml"
)

// Format is an output format selected with -o.
type Format string

const (
	FormatTable Format = "table"
	FormatJSON  Format = "json"
	FormatYAML  Format = "yaml"
)

// ParseFormat checks an -o value.
func ParseFormat(s string) (Format, error) {
	switch f := Format(strings.ToLower(s)); f {
	case FormatTable, FormatJSON, FormatYAML:
		return f, nil
	case "":
		return FormatTable, nil
	}
	return "", compute.InvalidField("--output", s, "must be table, json or yaml")
}

// Printer writes results in the selected format. It is the only code that
// knows about formats: commands hand it a value (for json/yaml) and a
// function that writes the table.
type Printer struct {
	Format Format
	Out    io.Writer
}

// Print writes v as JSON or YAML, or calls table with a tabwriter whose
// columns are separated by tabs.
func (p *Printer) Print(v any, table func(w io.Writer)) error {
	switch p.Format {
	case FormatJSON:
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.Out, "%s\n", b)
		return err
	case FormatYAML:
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = p.Out.Write(b)
		return err
	default:
		tw := tabwriter.NewWriter(p.Out, 0, 4, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	}
}

// Structured reports whether the output is machine-readable (json/yaml).
func (p *Printer) Structured() bool { return p.Format == FormatJSON || p.Format == FormatYAML }

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }

// dash returns s, or "-" when s is empty, so table columns never collapse.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
