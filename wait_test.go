package compute

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// waitFake is a Provider whose GetInstance plays back a script of
// statuses and errors, repeating the last step forever.
type waitFake struct {
	mu     sync.Mutex
	script []step
	calls  int
}

type step struct {
	status Status
	err    error
}

func (f *waitFake) GetInstance(ctx context.Context, id string) (*Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.script[min(f.calls, len(f.script)-1)]
	f.calls++
	if s.err != nil {
		return nil, s.err
	}
	inst := &Instance{ID: id, Status: s.status}
	if s.status == StatusFailed {
		inst.StatusReason = "disk on fire"
	}
	return inst, nil
}

func (f *waitFake) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *waitFake) Name() string { return "waitfake" }
func (f *waitFake) CreateInstance(context.Context, InstanceSpec) (*Instance, error) {
	return nil, ErrUnsupported
}
func (f *waitFake) ListInstances(context.Context, ListOptions) ([]*Instance, error) {
	return nil, ErrUnsupported
}
func (f *waitFake) TerminateInstance(context.Context, string) error { return ErrUnsupported }
func (f *waitFake) CreateCluster(context.Context, ClusterSpec) (*Cluster, error) {
	return nil, ErrUnsupported
}
func (f *waitFake) GetCluster(context.Context, string) (*Cluster, error) { return nil, ErrUnsupported }
func (f *waitFake) ListClusters(context.Context) ([]*Cluster, error)     { return nil, ErrUnsupported }
func (f *waitFake) DeleteCluster(context.Context, string) error          { return ErrUnsupported }
func (f *waitFake) Close() error                                         { return nil }

var _ Provider = (*waitFake)(nil)

func TestWait(t *testing.T) {
	fast := WaitOptions{Initial: time.Millisecond, Max: 2 * time.Millisecond}
	transient := fmt.Errorf("api throttled: %w", ErrTransient)
	cases := []struct {
		name      string
		script    []step
		want      []Status
		wantErr   error  // errors.Is target; nil means success
		errText   string // substring of the error
		wantCalls int
	}{
		{"already running", []step{{status: StatusRunning}}, []Status{StatusRunning}, nil, "", 1},
		{"pending then running", []step{{status: StatusPending}, {status: StatusPending}, {status: StatusRunning}}, []Status{StatusRunning}, nil, "", 3},
		{"any of several", []step{{status: StatusStopping}, {status: StatusStopped}}, []Status{StatusRunning, StatusStopped}, nil, "", 2},
		{"wanted terminal status", []step{{status: StatusTerminating}, {status: StatusTerminated}}, []Status{StatusTerminated}, nil, "", 2},
		{"transient errors retried", []step{{err: transient}, {err: transient}, {status: StatusRunning}}, []Status{StatusRunning}, nil, "", 3},
		{"fails on unwanted terminal status", []step{{status: StatusPending}, {status: StatusFailed}}, []Status{StatusRunning}, nil, "disk on fire", 2},
		{"terminated while waiting for running", []step{{status: StatusTerminated}}, []Status{StatusRunning}, nil, "terminated", 1},
		{"other errors returned at once", []step{{status: StatusPending}, {err: fmt.Errorf("instance i-1: %w", ErrNotFound)}}, []Status{StatusRunning}, ErrNotFound, "", 2},
		{"no status wanted", []step{{status: StatusRunning}}, nil, ErrInvalidArgument, "want", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := &waitFake{script: tc.script}
			inst, err := WaitWithOptions(context.Background(), f, "i-1", fast, tc.want...)
			if f.Calls() != tc.wantCalls {
				t.Errorf("GetInstance called %d times, want %d", f.Calls(), tc.wantCalls)
			}
			if tc.wantErr == nil && tc.errText == "" {
				if err != nil {
					t.Fatalf("Wait: %v", err)
				}
				last := tc.script[len(tc.script)-1].status
				if inst == nil || inst.Status != last {
					t.Fatalf("Wait returned %+v, want status %s", inst, last)
				}
				return
			}
			if err == nil {
				t.Fatalf("Wait succeeded with %+v, want an error", inst)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %q is not %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.errText) {
				t.Errorf("error %q does not contain %q", err, tc.errText)
			}
		})
	}
}

func TestWaitHonoursContext(t *testing.T) {
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 50*time.Millisecond)
		}, context.DeadlineExceeded},
		{"cancel", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(50*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := tc.ctx()
			defer cancel()
			f := &waitFake{script: []step{{status: StatusPending}}}
			start := time.Now()
			// Default options: the first poll interval is 100ms, longer
			// than the context lives, so Wait must leave in the sleep.
			_, err := Wait(ctx, f, "i-1", StatusRunning)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Wait error = %v, want %v", err, tc.want)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("Wait took %v after the context ended", d)
			}
			if !strings.Contains(err.Error(), "i-1") {
				t.Errorf("error %q does not name the instance", err)
			}
		})
	}
	// Transient errors until the deadline: still the context's error.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	f := &waitFake{script: []step{{err: ErrTransient}}}
	_, err := WaitWithOptions(ctx, f, "i-1", WaitOptions{Initial: time.Millisecond, Max: 5 * time.Millisecond}, StatusRunning)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait error = %v, want DeadlineExceeded", err)
	}
	if f.Calls() < 3 {
		t.Errorf("only %d polls in 30ms with 1-5ms backoff", f.Calls())
	}
}

func TestWaitBacksOff(t *testing.T) {
	f := &waitFake{script: []step{{status: StatusPending}, {status: StatusPending}, {status: StatusPending}, {status: StatusPending}, {status: StatusRunning}}}
	start := time.Now()
	if _, err := WaitWithOptions(context.Background(), f, "i-1", WaitOptions{Initial: 10 * time.Millisecond, Max: 20 * time.Millisecond}, StatusRunning); err != nil {
		t.Fatal(err)
	}
	// Sleeps of 10, 20, 20, 20ms (doubling, capped at Max): at least 70ms.
	if d := time.Since(start); d < 70*time.Millisecond {
		t.Errorf("Wait took %v, want >= 70ms of backoff", d)
	}
}
