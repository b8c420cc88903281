package aws

import (
	"errors"
	"fmt"
	"strings"

	"github.com/aws/smithy-go"

	"github.com/compute-sdk/compute"
)

// classify returns the compute error class of an EC2 error code, or nil
// when the code has none (the error is then returned as it is).
func classify(code string) error {
	switch code {
	case "InvalidParameterValue", "InvalidParameterCombination", "MissingParameter",
		"InvalidParameter", "UnknownParameter", "InvalidInput", "ValidationError":
		return compute.ErrInvalidArgument
	case "InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
		"InsufficientReservedInstanceCapacity", "InsufficientAddressCapacity":
		return compute.ErrCapacity
	case "RulesPerSecurityGroupLimitExceeded", "SecurityGroupLimitExceeded",
		"InstanceLimitExceeded", "VcpuLimitExceeded", "TagLimitExceeded", "MaxSpotInstanceCountExceeded":
		return compute.ErrQuota
	case "RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled",
		"InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable":
		return compute.ErrTransient
	case "DependencyViolation", "InvalidPermission.Duplicate", "InvalidGroup.Duplicate",
		"IdempotentParameterMismatch", "IncorrectInstanceState", "IncorrectState", "InvalidGroup.InUse":
		return compute.ErrConflict
	case "UnauthorizedOperation", "AuthFailure", "OptInRequired", "Blocked", "PendingVerification",
		"SignatureDoesNotMatch", "InvalidClientTokenId", "ExpiredToken":
		return compute.ErrPrecondition
	case "Unsupported", "UnsupportedOperation", "InvalidInstanceType":
		return compute.ErrUnsupported
	}
	switch {
	case strings.HasSuffix(code, ".NotFound"), code == "InvalidPermission.NotFound":
		return compute.ErrNotFound
	case strings.HasSuffix(code, "LimitExceeded"):
		return compute.ErrQuota
	case strings.HasSuffix(code, ".Malformed"), strings.HasPrefix(code, "InvalidParameter"):
		return compute.ErrInvalidArgument
	}
	return nil
}

// mapErr wraps an EC2 error with its compute class, keeping the original
// in the chain (errors.As still finds the smithy.APIError). Context errors
// and nil pass through.
func mapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return fmt.Errorf("aws: %s: %w", op, err)
	}
	class := classify(ae.ErrorCode())
	if class == nil {
		return fmt.Errorf("aws: %s: %s: %w", op, ae.ErrorCode(), err)
	}
	return fmt.Errorf("aws: %s: %w: %w", op, class, err)
}

// apiCode returns the EC2 error code in err's chain, or "".
func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}
