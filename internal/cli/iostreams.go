package cli

import (
	"bytes"
	"io"
	"os"

	"golang.org/x/term"
)

// IOStreams are the standard streams of a command and what is known about
// them. Commands never touch os.Stdin/Stdout/Stderr directly, so tests can
// give them buffers and pretend to be (or not be) a terminal.
type IOStreams struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer

	InTTY, OutTTY, ErrTTY bool

	// progress is set by the root command: spinners only when stderr is a
	// terminal, the output is a table and --quiet is off.
	progress bool
	quiet    bool
}

// System returns the process's streams.
func System() *IOStreams {
	isTTY := func(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }
	return &IOStreams{
		In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr,
		InTTY: isTTY(os.Stdin), OutTTY: isTTY(os.Stdout), ErrTTY: isTTY(os.Stderr),
	}
}

// Test returns streams backed by buffers (stdin empty), none a terminal.
func Test() (ios *IOStreams, in, out, errOut *bytes.Buffer) {
	in, out, errOut = new(bytes.Buffer), new(bytes.Buffer), new(bytes.Buffer)
	return &IOStreams{In: in, Out: out, ErrOut: errOut}, in, out, errOut
}

// Notef writes an informational line to stderr unless --quiet is set.
func (s *IOStreams) Notef(format string, args ...any) {
	if s.quiet {
		return
	}
	msg := sprintf(format, args...)
	if len(msg) == 0 || msg[len(msg)-1] != '\n' {
		msg += "\n"
	}
	io.WriteString(s.ErrOut, msg)
}
