package compute

import (
	"context"
	"fmt"
	"time"
)

// WaitOptions tunes Wait. The zero value polls from 100ms, doubling to 5s.
type WaitOptions struct {
	Initial time.Duration
	Max     time.Duration
}

// Wait polls the instance until its status is one of want, and returns it.
// It fails early when the instance reaches a terminal status that is not
// wanted, and returns ctx.Err() (wrapped) when ctx ends first. Transient
// errors from GetInstance are retried.
func Wait(ctx context.Context, p Provider, id string, want ...Status) (*Instance, error) {
	return WaitWithOptions(ctx, p, id, WaitOptions{}, want...)
}

// WaitWithOptions is Wait with explicit backoff bounds.
func WaitWithOptions(ctx context.Context, p Provider, id string, o WaitOptions, want ...Status) (*Instance, error) {
	if len(want) == 0 {
		return nil, InvalidField("want", "", "at least one status is required")
	}
	if o.Initial <= 0 {
		o.Initial = 100 * time.Millisecond
	}
	if o.Max <= 0 {
		o.Max = 5 * time.Second
	}
	delay := o.Initial
	for {
		inst, err := p.GetInstance(ctx, id)
		switch {
		case err == nil:
			for _, w := range want {
				if inst.Status == w {
					return inst, nil
				}
			}
			if inst.Status.Terminal() {
				return inst, fmt.Errorf("instance %s is %s (wanted %v): %s", id, inst.Status, want, inst.StatusReason)
			}
		case isTransient(err):
			// retry
		default:
			return nil, err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return inst, fmt.Errorf("waiting for instance %s to be %v: %w", id, want, ctx.Err())
		case <-t.C:
		}
		delay = min(delay*2, o.Max)
	}
}
