package cli

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// Progress shows a spinner with the current step on a terminal's stderr. It
// is a no-op when stderr is not a terminal, with -o json/yaml, or with
// --quiet, so pipes and scripts see only the result.
type Progress struct {
	w       io.Writer
	mu      sync.Mutex
	step    string
	stop    chan struct{}
	done    chan struct{}
	enabled bool
}

var spinnerFrames = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

// StartProgress starts a spinner showing step. Call Stop when done.
func (s *IOStreams) StartProgress(step string) *Progress {
	p := &Progress{w: s.ErrOut, step: step, enabled: s.progress && s.ErrTTY}
	if !p.enabled {
		return p
	}
	p.stop, p.done = make(chan struct{}), make(chan struct{})
	go p.loop(p.stop)
	return p
}

func (p *Progress) loop(stop <-chan struct{}) {
	defer close(p.done)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	start := time.Now()
	for i := 0; ; i++ {
		p.mu.Lock()
		// \r and "erase to end of line" redraw in place.
		fmt.Fprintf(p.w, "\r\x1b[K%s %s (%s)", spinnerFrames[i%len(spinnerFrames)], p.step, time.Since(start).Truncate(time.Second))
		p.mu.Unlock()
		select {
		case <-stop:
			p.mu.Lock()
			fmt.Fprint(p.w, "\r\x1b[K")
			p.mu.Unlock()
			return
		case <-t.C:
		}
	}
}

// Step changes the step shown.
func (p *Progress) Step(step string) {
	p.mu.Lock()
	p.step = step
	p.mu.Unlock()
}

// Stop removes the spinner. It is safe to call more than once.
func (p *Progress) Stop() {
	if !p.enabled {
		return
	}
	p.mu.Lock()
	stop := p.stop
	p.stop = nil
	p.mu.Unlock()
	if stop != nil {
		close(stop)
		<-p.done
	}
}
