package compute

import (
	"errors"
	"fmt"
)

// Error classes. Providers wrap one of these (with %w) so callers can branch
// with errors.Is without parsing messages.
var (
	// ErrNotFound: the named instance, cluster or rule does not exist.
	ErrNotFound = errors.New("not found")
	// ErrInvalidArgument: the request is malformed. Nothing was changed.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrConflict: the request contradicts existing state (a name in use, a
	// cluster that still has members, an instance in the wrong state).
	ErrConflict = errors.New("conflict")
	// ErrUnsupported: the provider cannot honour the request. Providers
	// return it instead of silently ignoring what they cannot do.
	ErrUnsupported = errors.New("unsupported")
	// ErrQuota: a limit would be exceeded (rules per group, instances, ...).
	ErrQuota = errors.New("quota exceeded")
	// ErrCapacity: the provider has no capacity for the request right now.
	ErrCapacity = errors.New("insufficient capacity")
	// ErrTransient: a temporary failure; the same request may succeed later.
	ErrTransient = errors.New("transient failure")
	// ErrPrecondition: the host lacks a privilege, package or kernel feature
	// the provider needs. The message says what to install or change.
	ErrPrecondition = errors.New("precondition failed")
)

// FieldError reports an invalid value in a request. It wraps
// ErrInvalidArgument.
type FieldError struct {
	Field  string // dotted path of the field, e.g. "rules[2].ports"
	Value  string // the offending value, quoted in the message
	Reason string // why it is invalid
}

func (e *FieldError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("invalid argument: %s: %s", e.Field, e.Reason)
	}
	return fmt.Sprintf("invalid argument: %s %q: %s", e.Field, e.Value, e.Reason)
}

// Unwrap makes errors.Is(err, ErrInvalidArgument) true.
func (e *FieldError) Unwrap() error { return ErrInvalidArgument }

// InvalidField returns a *FieldError.
func InvalidField(field, value, reason string) error {
	return &FieldError{Field: field, Value: value, Reason: reason}
}

// PrefixField returns err with its field path prefixed by prefix when err is
// a *FieldError, so nested validation reports "rules[1].ports" rather than
// "ports". Other errors are returned unchanged.
func PrefixField(prefix string, err error) error {
	var fe *FieldError
	if errors.As(err, &fe) {
		f := prefix
		if fe.Field != "" {
			if fe.Field[0] == '[' {
				f += fe.Field
			} else {
				f += "." + fe.Field
			}
		}
		return &FieldError{Field: f, Value: fe.Value, Reason: fe.Reason}
	}
	return err
}
