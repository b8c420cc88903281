package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/compute-sdk/compute"
)

// Exit codes. Scripts branch on them, so they are part of the interface.
const (
	ExitOK           = 0
	ExitError        = 1 // anything not listed below
	ExitUsage        = 2 // bad flag, argument, rule, key file (compute.ErrInvalidArgument)
	ExitNotFound     = 3 // compute.ErrNotFound
	ExitConflict     = 4 // compute.ErrConflict
	ExitPrecondition = 5 // compute.ErrPrecondition: needs root, a package, a kernel feature
	ExitInterrupted  = 130
)

// FlagError is a usage error found by the command line parser or a
// command's own argument checks.
type FlagError struct{ Err error }

func (e *FlagError) Error() string { return e.Err.Error() }
func (e *FlagError) Unwrap() error { return e.Err }

func flagErrorf(format string, args ...any) error {
	return &FlagError{Err: fmt.Errorf(format, args...)}
}

// ExitCodeError ends computectl with Code. With an empty Message nothing is
// printed (the command has already said everything, e.g. the remote
// command's exit status under `computectl ssh`).
type ExitCodeError struct {
	Code    int
	Message string
}

func (e *ExitCodeError) Error() string { return e.Message }

// ExitCode maps an error to the process exit code. It is the only place
// that decides exit codes.
func ExitCode(err error) int {
	var ec *ExitCodeError
	var fe *FlagError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ec):
		return ec.Code
	case errors.As(err, &fe), errors.Is(err, compute.ErrInvalidArgument):
		return ExitUsage
	case errors.Is(err, compute.ErrNotFound):
		return ExitNotFound
	case errors.Is(err, compute.ErrConflict):
		return ExitConflict
	case errors.Is(err, compute.ErrPrecondition):
		return ExitPrecondition
	case errors.Is(err, context.Canceled):
		return ExitInterrupted
	}
	return ExitError
}

// errorLine renders err as the single line computectl prints.
func errorLine(err error) string {
	// Multi-line errors (errors.Join) become one line: scripts and humans
	// read the first line of stderr.
	return strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
}
