// Package boot is the boot agent's boot sequence: explicit steps, each
// bounded by a deadline from the boot medium and reported on the console,
// from the early mounts to the hand-over to the real root.
//
//	early mounts -> boot medium -> modules -> network -> fabrics -> drives
//	  -> keys -> unlock -> partitions -> root file system -> switch_root
//
// Policy: every drive that has a key must unlock, or none stays unlocked.
// When a step fails, the drives unlocked during this boot are locked again,
// the console says what failed, why and what to check, and Run returns the
// failure; the caller (the agent's main) then enters the authenticated
// recovery loop. Key material lives only in internal/secret buffers: a drive
// key is zeroed as soon as its Admin1 PIN is derived, and the PINs of the
// drives unlocked this boot are kept, locked in memory, only so that those
// drives can be locked again if a later step fails; they are zeroed before
// the hand-over.
package boot

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/sedboot/sedboot/agent/bootrecord"
	"github.com/sedboot/sedboot/agent/keysource"
	"github.com/sedboot/sedboot/agent/steps"
	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/earlyfs"
)

// Default deadlines for the steps whose deadline the boot medium leaves
// zero.
const (
	DefaultTotal      = 5 * time.Minute
	DefaultMedium     = 15 * time.Second
	DefaultModules    = 20 * time.Second
	DefaultNetwork    = 30 * time.Second
	DefaultFabrics    = 30 * time.Second
	DefaultDrives     = 30 * time.Second
	DefaultKeys       = 60 * time.Second
	DefaultKeyAttempt = 5 * time.Second
	DefaultUnlock     = 60 * time.Second
	DefaultMount      = 30 * time.Second
)

// NewRoot is where the real root file system is mounted before the switch.
const NewRoot = "/newroot"

// Options configure an Agent. The zero value boots a real system.
type Options struct {
	// Console receives the progress lines (default os.Stdout, which is
	// /dev/console for PID 1).
	Console io.Writer
	// Log receives structured events (e.g. to /dev/kmsg); nil discards.
	Log *slog.Logger
	// Cmdline is the kernel command line (default: read /proc/cmdline
	// after the early mounts).
	Cmdline string
	// Record is the boot record to fill (default: a new one started now).
	Record *bootrecord.Record
	// Sources overrides the key sources built from the boot medium (for
	// tests and later sources); nil builds them from the document.
	Sources func(doc *config.Document) ([]keysource.Source, error)
	// KernelLog sends the structured events to /dev/kmsg once the early
	// mounts are done (when Log is nil).
	KernelLog bool
	// NoSwitchRoot stops after mounting the root and writing the record,
	// without switching to it (for tests outside a guest).
	NoSwitchRoot bool
}

// Agent runs one boot.
type Agent struct {
	opts    Options
	console io.Writer
	log     *slog.Logger
	record  *bootrecord.Record
	runner  *steps.Runner
	args    map[string]string
	start   time.Time
	until   time.Time // the total boot deadline, once the medium is read

	medium     string // the boot medium's device path
	mediumDevs map[string]bool
	raw        []byte // the document as read
	doc        *config.Document
	technician *config.Technician

	drives   []*driveState
	fetched  *keysource.Result
	rootDev  string
	rootInit string
}

// New returns an agent for one boot.
func New(opts Options) *Agent {
	a := &Agent{opts: opts, console: opts.Console, log: opts.Log, record: opts.Record, start: time.Now()}
	if a.console == nil {
		a.console = os.Stdout
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.record == nil {
		a.record = bootrecord.New(a.start)
	} else {
		a.start = a.record.Started
	}
	a.runner = &steps.Runner{Console: a.console, Log: a.log, Record: a.record}
	return a
}

// Log returns the agent's structured logger.
func (a *Agent) Log() *slog.Logger { return a.log }

// Record returns the boot record.
func (a *Agent) Record() *bootrecord.Record { return a.record }

// Technician returns the technician credential settings read from the boot
// medium, or nil when none could be read (the recovery shell then stays
// closed).
func (a *Agent) Technician() *config.Technician { return a.technician }

// Document returns the boot-medium document, or nil when it could not be
// read.
func (a *Agent) Document() *config.Document { return a.doc }

// Printf writes one console line prefixed with "sedboot: ".
func (a *Agent) Printf(format string, args ...any) { a.runner.Printf(format, args...) }

// Run performs the boot. On success it does not return (the real init
// runs in its place) unless Options.NoSwitchRoot is set. On failure every
// drive unlocked by this boot is locked again and the error, a
// *steps.Failure, names the step.
func (a *Agent) Run(ctx context.Context) error {
	a.Printf("boot agent starting (pid %d)", os.Getpid())
	err := a.runner.Run(ctx, a.steps())
	if err == nil {
		err = a.handOver(ctx)
	}
	if err != nil {
		a.relockAll()
		a.closeDrives()
		a.record.Finish("recovery", time.Now())
		if werr := a.record.Write(bootrecord.DefaultPath); werr != nil {
			a.log.Warn("boot record not written", "err", werr)
		}
		a.Printf("boot stopped: %v", err)
		a.Printf("every drive is locked; nothing was handed to the real OS")
		return err
	}
	return nil
}

func (a *Agent) deadline(step time.Duration) func() time.Duration {
	return func() time.Duration {
		if a.until.IsZero() {
			return step
		}
		left := time.Until(a.until)
		if left <= 0 {
			left = time.Millisecond
		}
		return min(step, left)
	}
}

func (a *Agent) dl(get func(config.Deadlines) config.Duration, def time.Duration) func() time.Duration {
	return func() time.Duration {
		d := def
		if a.doc != nil {
			d = get(a.doc.Deadlines).D(def)
		}
		return a.deadline(d)()
	}
}

func (a *Agent) steps() []steps.Step {
	return []steps.Step{
		{Name: "early mounts", Deadline: 10 * time.Second, Run: a.stepMounts},
		{Name: "boot medium", DeadlineFunc: func() time.Duration { return a.mediumWait() }, Run: a.stepMedium},
		{Name: "modules", DeadlineFunc: a.dl(func(d config.Deadlines) config.Duration { return d.Modules }, DefaultModules), Run: a.stepModules},
		{Name: "network", DeadlineFunc: a.dl(func(d config.Deadlines) config.Duration { return d.Network }, DefaultNetwork), Run: a.stepNetwork},
		{Name: "fabrics", DeadlineFunc: a.dl(func(d config.Deadlines) config.Duration { return d.Fabrics }, DefaultFabrics), Run: a.stepFabrics},
		{Name: "drives", DeadlineFunc: a.dl(func(d config.Deadlines) config.Duration { return d.Drives }, DefaultDrives), Run: a.stepDrives},
		{Name: "keys", DeadlineFunc: a.dl(func(d config.Deadlines) config.Duration { return d.Keys }, DefaultKeys), Run: a.stepKeys},
		{Name: "unlock", DeadlineFunc: a.dl(func(d config.Deadlines) config.Duration { return d.Unlock }, DefaultUnlock), Run: a.stepUnlock},
		{Name: "partitions", Deadline: 10 * time.Second, Run: a.stepPartitions},
		{Name: "root file system", DeadlineFunc: a.dl(func(d config.Deadlines) config.Duration { return d.Mount }, DefaultMount), Run: a.stepRoot},
	}
}

func (a *Agent) stepMounts(ctx context.Context) error {
	if _, err := earlyfs.Ensure(ctx, a.log); err != nil {
		return steps.WithHint(err, "the kernel has proc, sysfs, devtmpfs and tmpfs built in")
	}
	if a.opts.Cmdline == "" {
		b, err := os.ReadFile("/proc/cmdline")
		if err != nil {
			return fmt.Errorf("read kernel command line: %w", err)
		}
		a.opts.Cmdline = string(b)
	}
	a.args = ParseCmdline(a.opts.Cmdline)
	if a.opts.KernelLog && a.opts.Log == nil {
		if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
			a.log = slog.New(NewKmsgHandler(f, slog.LevelInfo))
			a.runner.Log = a.log
		}
	}
	return nil
}

// handOver writes the boot record, forgets the PINs and switches to the
// real root.
func (a *Agent) handOver(ctx context.Context) error {
	a.closeDrives()
	a.forgetPINs()
	a.record.Finish("switch_root", time.Now())
	if err := a.record.Write(bootrecord.DefaultPath); err != nil {
		a.log.Warn("boot record not written", "err", err)
		a.Printf("warning: boot record not written: %v", err)
	}
	a.Printf("switching to the real root (%s on %s): exec %s after %s", a.doc.Root.FSType, a.rootDev, a.rootInit,
		time.Since(a.start).Round(time.Millisecond))
	if a.opts.NoSwitchRoot {
		return nil
	}
	err := earlyfs.SwitchRoot(ctx, earlyfs.SwitchRootConfig{
		NewRoot:       NewRoot,
		Init:          a.rootInit,
		FreeInitramfs: true,
		Logger:        a.log,
	})
	// SwitchRoot returns only on failure; the PINs are already gone, so
	// the drives cannot be locked again from here.
	a.Printf("switch_root failed: %v", err)
	a.Printf("the drives stay unlocked until they are power cycled: power the controller off")
	return &steps.Failure{Step: "switch_root", Err: err}
}

// ParseCmdline parses a kernel command line into key -> value ("k" alone
// maps to "").
func ParseCmdline(s string) map[string]string {
	out := map[string]string{}
	word, quoted := []rune{}, false
	flush := func() {
		if len(word) == 0 {
			return
		}
		w := string(word)
		k, v, _ := cutEq(w)
		out[k] = v
		word = word[:0]
	}
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
		case (r == ' ' || r == '\n' || r == '\t') && !quoted:
			flush()
		default:
			word = append(word, r)
		}
	}
	flush()
	return out
}

func cutEq(w string) (string, string, bool) {
	for i := 0; i < len(w); i++ {
		if w[i] == '=' {
			return w[:i], w[i+1:], true
		}
	}
	return w, "", false
}
