package aws

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/compute-sdk/compute"
)

// Defaults for Config fields left empty.
const (
	DefaultInstanceType = "t3.micro"
	DefaultOwner        = "compute"
	defaultPoll         = 5 * time.Second
	defaultGCGrace      = 15 * time.Minute
)

// Config configures the AWS provider. Credentials and, unless Region is
// set, the region come from the standard AWS chain (environment, shared
// config and credentials files with Profile, SSO, IMDS).
type Config struct {
	Region  string
	Profile string
	// VPCID is the VPC security groups are created in; empty means the
	// region's default VPC. It must be the VPC of SubnetID when both are set.
	VPCID string
	// SubnetID is where instances are launched; empty lets EC2 pick a
	// default subnet of the default VPC.
	SubnetID string
	// ImageID is the AMI used when a spec names no image. There is no
	// implicit default (no SSM lookup): with neither, CreateInstance fails
	// with ErrInvalidArgument naming "image".
	ImageID string
	// InstanceType is used when a spec names no type (default t3.micro).
	InstanceType string
	// KMSKeyID encrypts EBS volumes; empty uses the account's default EBS
	// KMS key (aws/ebs). Volumes are encrypted either way.
	KMSKeyID string
	// Endpoint overrides the EC2 endpoint (BaseEndpoint), e.g. for tests.
	Endpoint string
	// HTTPClient, when set, must use an *http.Transport (or nil, meaning a
	// clone of http.DefaultTransport): its TLS minimum is raised to 1.2.
	HTTPClient *http.Client
	// Credentials overrides the credential chain (for tests and embedding).
	Credentials awssdk.CredentialsProvider
	// Owner is the value of the compute:owner tag on every object this
	// provider creates and the only objects it lists, changes or deletes
	// (default "compute"). Two providers with different owners never touch
	// each other's objects.
	Owner string
	// CallerCIDRs are the source addresses instances see for traffic from
	// this machine, for the CLI's default SSH rule. Never discovered by
	// calling an outside service.
	CallerCIDRs []netip.Prefix
	// PollInterval is how often lifecycle waits poll (default 5s).
	PollInterval time.Duration
	// MaxAttempts and MaxBackoff tune the SDK retryer for throttling and
	// transient errors (defaults: the SDK's, 3 attempts and 20s).
	MaxAttempts int
	MaxBackoff  time.Duration
	// GCGrace is how old an orphaned security group must be before GC
	// deletes it, so GC never races a create in progress (default 15m).
	GCGrace time.Duration
	Logger  *slog.Logger

	// ec2Options are applied last to the EC2 client (tests inject faults).
	ec2Options []func(*ec2.Options)
}

// configFrom accepts a Config, *Config, map[string]string or nil.
func configFrom(v any) (Config, error) {
	switch c := v.(type) {
	case nil:
		return Config{}, nil
	case Config:
		return c, nil
	case *Config:
		if c == nil {
			return Config{}, nil
		}
		return *c, nil
	case map[string]string:
		return configFromMap(c)
	default:
		return Config{}, compute.InvalidField("config", fmt.Sprintf("%T", v), "want aws.Config, *aws.Config or map[string]string")
	}
}

// configFromMap reads the settings of a config-file profile. Keys are the
// Config field names in lowerCamelCase.
func configFromMap(m map[string]string) (Config, error) {
	var c Config
	for k, v := range m {
		var err error
		switch k {
		case "region":
			c.Region = v
		case "profile":
			c.Profile = v
		case "vpcId":
			c.VPCID = v
		case "subnetId":
			c.SubnetID = v
		case "imageId", "image":
			c.ImageID = v
		case "instanceType", "type":
			c.InstanceType = v
		case "kmsKeyId":
			c.KMSKeyID = v
		case "endpoint":
			c.Endpoint = v
		case "owner":
			c.Owner = v
		case "callerCidrs":
			for _, s := range strings.Split(v, ",") {
				if s = strings.TrimSpace(s); s == "" {
					continue
				}
				p, perr := netip.ParsePrefix(s)
				if perr != nil || p != p.Masked() {
					return Config{}, compute.InvalidField("callerCidrs", s, "must be a canonical CIDR")
				}
				c.CallerCIDRs = append(c.CallerCIDRs, p)
			}
		case "pollInterval":
			c.PollInterval, err = time.ParseDuration(v)
		case "maxBackoff":
			c.MaxBackoff, err = time.ParseDuration(v)
		case "gcGrace":
			c.GCGrace, err = time.ParseDuration(v)
		case "maxAttempts":
			c.MaxAttempts, err = strconv.Atoi(v)
		default:
			return Config{}, compute.InvalidField(k, v, "unknown aws setting")
		}
		if err != nil {
			return Config{}, compute.InvalidField(k, v, err.Error())
		}
	}
	return c, nil
}

func (c *Config) setDefaults() {
	if c.InstanceType == "" {
		c.InstanceType = DefaultInstanceType
	}
	if c.Owner == "" {
		c.Owner = DefaultOwner
	}
	if c.PollInterval <= 0 {
		c.PollInterval = defaultPoll
	}
	if c.GCGrace == 0 { // negative: no grace (tests)
		c.GCGrace = defaultGCGrace
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func (c *Config) validate() error {
	if len(c.Owner) > 200 {
		return compute.InvalidField("owner", c.Owner, "must be at most 200 characters")
	}
	for i, p := range c.CallerCIDRs {
		if !p.IsValid() || p != p.Masked() {
			return compute.InvalidField(fmt.Sprintf("callerCidrs[%d]", i), p.String(), "must be a canonical CIDR")
		}
	}
	return nil
}
