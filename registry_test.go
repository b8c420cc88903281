package compute

import (
	"context"
	"errors"
	"maps"
	"reflect"
	"strings"
	"testing"
)

// isolateRegistry gives the test an empty registry and restores the real
// one (with providers registered by init functions) afterwards.
func isolateRegistry(t *testing.T) {
	t.Helper()
	registryMu.Lock()
	saved := maps.Clone(registry)
	registryMu.Unlock()
	unregisterAll()
	t.Cleanup(func() {
		registryMu.Lock()
		registry = saved
		registryMu.Unlock()
	})
}

func TestRegisterPanics(t *testing.T) {
	isolateRegistry(t)
	open := func(context.Context, any) (Provider, error) { return nil, nil }
	Register("one", open)
	cases := []struct {
		name     string
		register func()
		msg      string
	}{
		{"nil open", func() { Register("two", nil) }, "nil"},
		{"empty name", func() { Register("", open) }, "empty"},
		{"duplicate", func() { Register("one", open) }, "twice"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				r := recover()
				if r == nil {
					t.Fatal("Register did not panic")
				}
				if s, _ := r.(string); !strings.Contains(s, tc.msg) {
					t.Errorf("panic %v does not mention %q", r, tc.msg)
				}
			}()
			tc.register()
		})
	}
	if got := Providers(); !reflect.DeepEqual(got, []string{"one"}) {
		t.Errorf("after failed registrations Providers() = %v", got)
	}
}

func TestOpen(t *testing.T) {
	isolateRegistry(t)
	var gotConfig any
	want := &waitFake{}
	Register("zeta", func(ctx context.Context, config any) (Provider, error) { return nil, errors.New("zeta broke") })
	Register("alpha", func(ctx context.Context, config any) (Provider, error) {
		gotConfig = config
		return want, nil
	})
	if got := Providers(); !reflect.DeepEqual(got, []string{"alpha", "zeta"}) {
		t.Errorf("Providers() = %v, want sorted", got)
	}
	cfg := map[string]string{"root": "/tmp/x"}
	p, err := Open(context.Background(), "alpha", cfg)
	if err != nil || p != want {
		t.Fatalf("Open(alpha) = %v, %v", p, err)
	}
	if !reflect.DeepEqual(gotConfig, cfg) {
		t.Errorf("open func got config %v", gotConfig)
	}
	if _, err := Open(context.Background(), "zeta", nil); err == nil || err.Error() != "zeta broke" {
		t.Errorf("Open(zeta) error = %v, want the provider's own", err)
	}
	_, err = Open(context.Background(), "lcoal", nil)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open(unknown) = %v, want ErrNotFound", err)
	}
	for _, s := range []string{`"lcoal"`, "alpha", "zeta", "import"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("Open(unknown) error %q should mention %s", err, s)
		}
	}
}
