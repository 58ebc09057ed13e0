package main

import (
	"io"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progressBar draws "label  42% |████      | (4200/10000, 1234 msg/s) [3s:5s]"
// with github.com/schollz/progressbar, redrawn at most ten times a second.
// A nil *progressBar draws nothing.
type progressBar struct {
	mu    sync.Mutex
	w     io.Writer
	label string
	bar   *progressbar.ProgressBar
	total int64
}

// newProgress returns a bar on stderr when stdout is a terminal, and nil
// otherwise.
func (a *app) newProgress(label string) *progressBar {
	if !a.tty {
		return nil
	}
	return newBar(a.stderr, label)
}

func newBar(w io.Writer, label string) *progressBar {
	return &progressBar{w: w, label: label}
}

// update shows done of total (total 0: unknown, a spinner).
func (p *progressBar) update(done, total int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if total <= 0 {
		total = -1
	}
	if p.bar == nil {
		p.total = total
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(p.w),
			progressbar.OptionSetDescription(p.label),
			progressbar.OptionSetWidth(30),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("msg"),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionUseANSICodes(false),
		)
	} else if total != p.total {
		p.total = total
		p.bar.ChangeMax64(total)
	}
	_ = p.bar.Set64(done)
}

// done ends the bar's line, leaving it as it was (an operation that
// stopped early does not show 100%).
func (p *progressBar) done() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar == nil {
		return
	}
	// The last step is drawn whatever the throttle, then the line ends.
	_ = p.bar.RenderBlank()
	_ = p.bar.Exit()
	io.WriteString(p.w, "\n")
}
