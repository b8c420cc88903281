package aws

import (
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"slices"
	"strings"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// Tags on every object this provider creates. compute:owner is what makes
// an object ours: nothing without it (or with another owner) is listed,
// changed or deleted.
const (
	tagOwner       = "compute:owner"
	tagKind        = "compute:kind" // "cluster" or "instance", on security groups
	tagCluster     = "compute:cluster"
	tagName        = "compute:name"
	tagRefID       = "compute:ref-id"
	tagInstanceID  = "compute:instance-id"
	tagCreated     = "compute:created"
	tagBase        = "compute:base"   // on rules compute adds itself (the cluster's self rule)
	tagRulePrefix  = "compute:rule:"  // + rule ID [+ ":N"]: the rule's definition (policy.Format)
	tagLabelPrefix = "compute:label:" // + label key
	// tagHostKeyPrefix + "1", "2", ...: the SSH host keys read from the
	// console, on the instance.
	tagHostKeyPrefix = "compute:host-key:"

	kindCluster  = "cluster"
	kindInstance = "instance"

	// maxTagValue is EC2's limit on a tag value, in characters.
	maxTagValue = 256
	// maxTags is EC2's limit of tags per resource.
	maxTags = 50
)

func tagMap(ts []types.Tag) map[string]string {
	m := make(map[string]string, len(ts))
	for _, t := range ts {
		m[awssdk.ToString(t.Key)] = awssdk.ToString(t.Value)
	}
	return m
}

func tagList(m map[string]string) []types.Tag {
	keys := slices.Sorted(maps.Keys(m))
	ts := make([]types.Tag, 0, len(keys))
	for _, k := range keys {
		ts = append(ts, types.Tag{Key: awssdk.String(k), Value: awssdk.String(m[k])})
	}
	return ts
}

func tagSpec(rt types.ResourceType, m map[string]string) types.TagSpecification {
	return types.TagSpecification{ResourceType: rt, Tags: tagList(m)}
}

func filter(name string, values ...string) types.Filter {
	return types.Filter{Name: awssdk.String(name), Values: values}
}

func (p *Provider) ownerFilter() types.Filter { return filter("tag:"+tagOwner, p.cfg.Owner) }

// labelsFrom extracts compute labels from tags.
func labelsFrom(tags map[string]string) map[string]string {
	var out map[string]string
	for k, v := range tags {
		if l, ok := strings.CutPrefix(k, tagLabelPrefix); ok {
			if out == nil {
				out = map[string]string{}
			}
			out[l] = v
		}
	}
	return out
}

// clientToken derives RunInstances' idempotency token (at most 64 ASCII
// characters) from the owner and the spec's idempotency key, so the same
// RefID never launches two instances even when a create is retried after a
// lost response.
func clientToken(owner, key string) string {
	sum := sha256.Sum256([]byte(owner + "\x00" + key))
	return hex.EncodeToString(sum[:]) // 64 characters
}

// instanceGroupName names an instance's own security group. It derives
// from the idempotency key, not the instance ID, because the group must
// exist before the instance does.
func instanceGroupName(owner, key string) string {
	return "compute-i-" + clientToken(owner, key)[:20]
}

func clusterGroupName(name string) string { return "compute-cluster-" + name }
