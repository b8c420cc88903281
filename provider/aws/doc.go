// Package aws is the compute provider for Amazon EC2, registered as "aws".
//
// Instances are EC2 instances with encrypted EBS volumes and IMDSv2 only,
// reached over SSH with keys injected by cloud-init. Each instance has its
// own security group for its rules, and each cluster is one security group
// whose only broad rule lets its members reach each other; the VPC's default
// group is never attached. See SECURITY.md for how each point of compute's
// security model maps to AWS.
//
// Import it for its side effect to make compute.Open(ctx, "aws", cfg) work:
//
//	import _ "github.com/compute-sdk/compute/provider/aws"
package aws
