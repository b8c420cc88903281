package aws

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/compute-sdk/compute"
)

// Name is the provider's registered name.
const Name = "aws"

func init() {
	compute.Register(Name, func(ctx context.Context, cfg any) (compute.Provider, error) {
		c, err := configFrom(cfg)
		if err != nil {
			return nil, err
		}
		return New(ctx, c)
	})
}

// ruleLimit is AWS's default quota of inbound rules per security group.
const ruleLimit = 60

// Provider is the AWS EC2 provider.
type Provider struct {
	cfg  Config
	ec2  *ec2.Client
	http *http.Client // the client under the SDK, for the TLS check
	log  *slog.Logger

	mu       sync.Mutex
	hostKeys map[string][]compute.HostKey // by instance ID, once the console shows them
}

var (
	_ compute.Provider         = (*Provider)(nil)
	_ compute.StopStarter      = (*Provider)(nil)
	_ compute.Rebooter         = (*Provider)(nil)
	_ compute.FirewallManager  = (*Provider)(nil)
	_ compute.GarbageCollector = (*Provider)(nil)
	_ compute.FeatureReporter  = (*Provider)(nil)
	_ compute.CallerPrefixer   = (*Provider)(nil)
	_ compute.Inventorier      = (*Provider)(nil)
)

// New returns a provider using credentials and region from the standard
// AWS chain, overridden by cfg.
func New(ctx context.Context, cfg Config) (*Provider, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	sdkHTTP, _, err := httpClient(cfg.HTTPClient)
	if err != nil {
		return nil, err
	}
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(sdkHTTP),
		config.WithRetryer(func() awssdk.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				if cfg.MaxAttempts > 0 {
					o.MaxAttempts = cfg.MaxAttempts
				}
				if cfg.MaxBackoff > 0 {
					o.MaxBackoff = cfg.MaxBackoff
					o.Backoff = retry.NewExponentialJitterBackoff(cfg.MaxBackoff)
				}
				// The client-side retry quota exists to stop retry storms
				// across a fleet; one CLI or SDK user is better served by
				// the backoff alone, and a drained bucket would turn
				// throttling into hard failures.
				o.RateLimiter = ratelimit.None
			})
		}),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(cfg.Profile))
	}
	if cfg.Credentials != nil {
		opts = append(opts, config.WithCredentialsProvider(cfg.Credentials))
	}
	ac, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("aws: loading configuration: %v: %w", err, compute.ErrPrecondition)
	}
	// Loading may have replaced the transport (a CA bundle); pin it again
	// and keep the exact client the SDK uses.
	var hc *http.Client
	switch c := ac.HTTPClient.(type) {
	case *awshttp.BuildableClient:
		bc := c.WithTransportOptions(pinTLS)
		ac.HTTPClient = bc
		hc = &http.Client{Transport: bc.GetTransport()}
	case *http.Client:
		hc = c
	default:
		return nil, fmt.Errorf("aws: unexpected HTTP client %T: %w", c, compute.ErrPrecondition)
	}
	if ac.Region == "" {
		return nil, fmt.Errorf("aws: no region: set Region, AWS_REGION or a profile's region: %w", compute.ErrPrecondition)
	}
	cli := ec2.NewFromConfig(ac, func(o *ec2.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = awssdk.String(cfg.Endpoint)
		}
		for _, f := range cfg.ec2Options {
			f(o)
		}
	})
	return &Provider{
		cfg:      cfg,
		ec2:      cli,
		http:     hc,
		log:      cfg.Logger.With("provider", Name),
		hostKeys: map[string][]compute.HostKey{},
	}, nil
}

// pinTLS raises a transport's minimum TLS version to 1.2.
func pinTLS(tr *http.Transport) {
	if tr.TLSClientConfig == nil {
		tr.TLSClientConfig = &tls.Config{}
	}
	if tr.TLSClientConfig.MinVersion < tls.VersionTLS12 {
		tr.TLSClientConfig.MinVersion = tls.VersionTLS12
	}
}

// httpClient returns the client every AWS call goes through and the same
// as an *http.Client (for HTTPClients). Without base it is the SDK's
// buildable client, so the SDK can still add a custom CA bundle
// (AWS_CA_BUNDLE); with base, base's transport is cloned. Either way TLS
// 1.2 is the minimum.
func httpClient(base *http.Client) (awssdk.HTTPClient, *http.Client, error) {
	if base == nil {
		bc := awshttp.NewBuildableClient().WithTransportOptions(pinTLS)
		return bc, &http.Client{Transport: bc.GetTransport()}, nil
	}
	var tr *http.Transport
	switch t := base.Transport.(type) {
	case nil:
		tr = http.DefaultTransport.(*http.Transport).Clone()
	case *http.Transport:
		tr = t.Clone()
	default:
		return nil, nil, compute.InvalidField("httpClient.transport", fmt.Sprintf("%T", t), "must be an *http.Transport so that TLS 1.2 can be enforced")
	}
	pinTLS(tr)
	c := *base
	c.Transport = tr
	return &c, &c, nil
}

// Name returns "aws".
func (p *Provider) Name() string { return Name }

// Close releases idle connections.
func (p *Provider) Close() error {
	p.http.CloseIdleConnections()
	return nil
}

// Features reports what the method set cannot show.
func (p *Provider) Features() compute.Features {
	return compute.Features{
		IPv6:             true,
		EncryptionAtRest: "EBS AES-256 (KMS)",
		RuleLimit:        ruleLimit,
		// EC2 applies security group changes to new connections within
		// seconds but documents no bound; this is a conservative one.
		RuleChangeLatency: 5 * time.Second,
	}
}

// HTTPClients returns the HTTP client under every AWS API call, for the
// conformance suite's TLS check.
func (p *Provider) HTTPClients() []*http.Client { return []*http.Client{p.http} }

// CallerPrefixes returns Config.CallerCIDRs. The provider never asks an
// outside service for the caller's public address.
func (p *Provider) CallerPrefixes(ctx context.Context) ([]netip.Prefix, error) {
	if len(p.cfg.CallerCIDRs) == 0 {
		return nil, fmt.Errorf("aws: the caller's public address is not configured (set callerCidrs): %w", compute.ErrUnsupported)
	}
	return slices.Clone(p.cfg.CallerCIDRs), nil
}
