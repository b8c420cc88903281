package compute

import (
	"context"
	"fmt"
	"sort"
	"sync"
)

// OpenFunc opens a provider from its configuration. config is the
// provider's own configuration type or a map[string]string of settings (as
// read from a config file); nil means defaults.
type OpenFunc func(ctx context.Context, config any) (Provider, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]OpenFunc{}
)

// Register makes a provider available under name. It panics if open is nil,
// name is empty or already registered, as database/sql.Register does: these
// are programming errors found at init time.
func Register(name string, open OpenFunc) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if open == nil {
		panic("compute: Register open func is nil")
	}
	if name == "" {
		panic("compute: Register with empty name")
	}
	if _, dup := registry[name]; dup {
		panic("compute: Register called twice for provider " + name)
	}
	registry[name] = open
}

// Providers returns the sorted names of the registered providers.
func Providers() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Open opens the provider registered under name.
func Open(ctx context.Context, name string, config any) (Provider, error) {
	registryMu.RLock()
	open, ok := registry[name]
	registryMu.RUnlock()
	if !ok {
		known := Providers()
		return nil, fmt.Errorf("%w: provider %q is not registered (known: %v; forgotten import?)", ErrNotFound, name, known)
	}
	return open(ctx, config)
}

// unregisterAll is for tests.
func unregisterAll() {
	registryMu.Lock()
	defer registryMu.Unlock()
	registry = map[string]OpenFunc{}
}
