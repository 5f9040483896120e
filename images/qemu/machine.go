package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sedboot/sedboot/images/filelock"
)

// ioGrace bounds how long the console and stderr readers may run on after
// QEMU exited.
const ioGrace = 2 * time.Second

// Machine is a running (or ended) guest.
type Machine struct {
	cfg     Config
	cmd     *exec.Cmd
	log     *slog.Logger
	started time.Time
	dir     string // cfg.Dir or a temporary directory
	ownDir  bool   // dir is ours to remove
	fwdDir  string // forward helpers register here
	stdin   io.WriteCloser
	stdout  *os.File
	slot    *filelock.Held

	mu       sync.Mutex
	console  bytes.Buffer  // everything the serial console printed
	cursor   int           // where the next Expect starts searching
	changed  chan struct{} // closed and replaced when console grows or the guest exits
	stderr   bytes.Buffer
	exit     *Exit
	killed   bool
	timedOut bool

	done      chan struct{} // closed once QEMU exited and everything is cleaned up
	ioDone    chan struct{} // closed when the console reader finished
	killOnce  sync.Once
	cleanOnce sync.Once
}

// Start reserves a guest slot (waiting for one while ctx allows), starts
// QEMU for cfg and returns at once; the guest boots in the background.
// The guest is killed when ctx ends, when cfg.Timeout expires, or on Kill.
func Start(ctx context.Context, cfg Config) (*Machine, error) {
	ms, err := StartAll(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return ms[0], nil
}

// StartAll starts several guests that must run at the same time (for
// example two controllers on a link). It reserves all their slots at once,
// so two processes each starting a pair cannot deadlock holding one slot
// each.
func StartAll(ctx context.Context, cfgs ...Config) ([]*Machine, error) {
	if len(cfgs) == 0 {
		return nil, errors.New("start guests: no configuration")
	}
	for i := range cfgs {
		cfgs[i].setDefaults()
		if err := cfgs[i].validate(); err != nil {
			return nil, fmt.Errorf("start guest %s: %w", cfgs[i].Name, err)
		}
	}
	bin, err := lookPath(cfgs[0].Binary)
	if err != nil {
		return nil, fmt.Errorf("start guests: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start guests: forward helper: %w", err)
	}
	slots, err := reserveSlots(ctx, SlotDir(), maxGuests(), len(cfgs))
	if err != nil {
		return nil, fmt.Errorf("start guests: %w", err)
	}
	var ms []*Machine
	for i, cfg := range cfgs {
		m, err := start(ctx, bin, self, cfg, slots[i])
		if err != nil {
			for _, s := range slots[i+1:] {
				s.Unlock()
			}
			for _, started := range ms {
				started.Kill()
			}
			return nil, fmt.Errorf("start guest %s: %w", cfg.Name, err)
		}
		ms = append(ms, m)
	}
	return ms, nil
}

func start(ctx context.Context, bin, self string, cfg Config, slot *filelock.Held) (m *Machine, err error) {
	m = &Machine{
		cfg:     cfg,
		log:     cfg.Log.With("guest", cfg.Name),
		slot:    slot,
		changed: make(chan struct{}),
		done:    make(chan struct{}),
		ioDone:  make(chan struct{}),
		dir:     cfg.Dir,
	}
	defer func() {
		if err != nil {
			slot.Unlock()
			if m.ownDir {
				os.RemoveAll(m.dir)
			}
		}
	}()
	if m.dir == "" {
		if m.dir, err = os.MkdirTemp("", "sedboot-qemu-"); err != nil {
			return nil, err
		}
		m.ownDir = true
	} else if err := os.MkdirAll(m.dir, 0o755); err != nil {
		return nil, err
	}
	m.fwdDir = filepath.Join(m.dir, "fwd-"+cfg.Name)
	if err := os.MkdirAll(m.fwdDir, 0o755); err != nil {
		return nil, err
	}
	args, err := cfg.args(self, m.fwdDir)
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(m.ConsolePath())
	if err != nil {
		return nil, err
	}

	m.cmd = exec.Command(bin, args...)
	m.cmd.Dir = m.dir
	// Own process group: Kill takes QEMU and anything it forked that
	// stayed in the group. Pdeathsig: QEMU dies if this process does,
	// even without running any cleanup.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	m.cmd.Stderr = &lockedWriter{mu: &m.mu, w: &m.stderr}
	m.cmd.WaitDelay = ioGrace
	// The console is read from a pipe of our own rather than StdoutPipe,
	// whose reads must finish before Wait: the reader keeps going until
	// QEMU's last byte.
	stdout, stdoutW, err := os.Pipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	m.stdout = stdout
	m.cmd.Stdout = stdoutW
	if m.stdin, err = m.cmd.StdinPipe(); err != nil {
		logFile.Close()
		stdout.Close()
		stdoutW.Close()
		return nil, err
	}
	m.log.Debug("starting QEMU", "args", strings.Join(args, " "))
	m.started = time.Now()
	err = m.cmd.Start()
	stdoutW.Close()
	if err != nil {
		logFile.Close()
		stdout.Close()
		return nil, fmt.Errorf("%s: %w", bin, err)
	}
	go m.readConsole(stdout, logFile)
	go m.waitExit()
	go m.watch(ctx)
	return m, nil
}

// readConsole copies QEMU's stdout (the serial console) into the log file
// and the searchable buffer.
func (m *Machine) readConsole(r *os.File, logFile *os.File) {
	defer close(m.ioDone)
	defer logFile.Close()
	defer r.Close()
	buf := make([]byte, 32*1024)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			logFile.Write(buf[:n])
			m.mu.Lock()
			m.console.Write(buf[:n])
			close(m.changed)
			m.changed = make(chan struct{})
			m.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// waitExit reaps QEMU, records how it ended and cleans up after it.
func (m *Machine) waitExit() {
	err := m.cmd.Wait()
	select {
	case <-m.ioDone:
	case <-time.After(ioGrace):
		m.stdout.Close() // something else holds the pipe's write end
		<-m.ioDone
	}
	m.cleanup()
	m.mu.Lock()
	e := Exit{Code: m.cmd.ProcessState.ExitCode(), Killed: m.killed, TimedOut: m.timedOut, Uptime: time.Since(m.started)}
	e.Panicked = bytes.Contains(m.console.Bytes(), []byte("Kernel panic - not syncing"))
	m.exit = &e
	close(m.changed)
	m.changed = make(chan struct{})
	stderr := strings.TrimSpace(m.stderr.String())
	m.mu.Unlock()
	if err != nil && !e.Killed {
		m.log.Warn("QEMU failed", "exit", e.String(), "stderr", stderr)
	} else {
		m.log.Debug("QEMU ended", "exit", e.String())
	}
	close(m.done)
}

// watch kills the guest when ctx ends or its hard timeout expires.
func (m *Machine) watch(ctx context.Context) {
	timer := time.NewTimer(m.cfg.Timeout)
	defer timer.Stop()
	select {
	case <-m.done:
	case <-ctx.Done():
		m.log.Debug("context ended: killing guest", "err", ctx.Err())
		m.Kill()
	case <-timer.C:
		m.mu.Lock()
		m.timedOut = true
		m.mu.Unlock()
		m.log.Warn("hard timeout: killing guest", "timeout", m.cfg.Timeout)
		m.Kill()
	}
}

// Kill kills QEMU's process group and the forward helpers, and waits until
// QEMU is gone. It is safe to call at any time and more than once.
func (m *Machine) Kill() {
	m.killOnce.Do(func() {
		m.mu.Lock()
		if m.exit == nil {
			m.killed = true
		}
		m.mu.Unlock()
		// The group (QEMU and anything in it) first; QEMU itself
		// again in case it left the group.
		syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
		m.cmd.Process.Kill()
	})
	<-m.done
}

// cleanup ends the forward helpers (they leave QEMU's process group, so
// the group kill misses them), removes the guest's files if they are ours,
// and frees the guest slot.
func (m *Machine) cleanup() {
	m.cleanOnce.Do(func() {
		killHelpers(m.fwdDir, m.log)
		m.stdin.Close()
		if m.ownDir {
			// Keep the console log readable through ConsoleText.
			os.RemoveAll(m.fwdDir)
		}
		m.slot.Unlock()
	})
}

// Close kills the guest if it still runs and removes its temporary
// directory (when Config.Dir was empty). The console text stays available.
func (m *Machine) Close() {
	m.Kill()
	if m.ownDir {
		os.RemoveAll(m.dir)
	}
}

// Wait waits until QEMU exits (or ctx ends) and says how the guest ended.
func (m *Machine) Wait(ctx context.Context) (Exit, error) {
	select {
	case <-m.done:
		m.mu.Lock()
		defer m.mu.Unlock()
		return *m.exit, nil
	case <-ctx.Done():
		return Exit{}, fmt.Errorf("wait for guest %s to exit: %w", m.cfg.Name, ctx.Err())
	}
}

// Done is closed when QEMU has exited and the guest is cleaned up.
func (m *Machine) Done() <-chan struct{} {
	return m.done
}

// Started returns when QEMU was started; measure boot times from it.
func (m *Machine) Started() time.Time {
	return m.started
}

// Name returns the guest's name.
func (m *Machine) Name() string {
	return m.cfg.Name
}

// ConsolePath is the file the serial console is captured to.
func (m *Machine) ConsolePath() string {
	return filepath.Join(m.dir, m.cfg.Name+"-console.log")
}

// ConsoleText returns everything the console printed so far.
func (m *Machine) ConsoleText() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.console.String()
}

// Stderr returns what QEMU itself printed on its standard error.
func (m *Machine) Stderr() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stderr.String()
}

// Send writes s to the guest's serial console input. (The console shares
// QEMU's standard input with its monitor: Ctrl-A is QEMU's escape key.)
func (m *Machine) Send(s string) error {
	if _, err := io.WriteString(m.stdin, s); err != nil {
		return fmt.Errorf("send to guest %s console: %w", m.cfg.Name, err)
	}
	return nil
}

// WaitFor waits until the console shows marker after the previous match
// (see Expect).
func (m *Machine) WaitFor(ctx context.Context, marker string) error {
	_, err := m.Expect(ctx, regexp.MustCompile(regexp.QuoteMeta(marker)))
	return err
}

// Expect waits until re matches console output printed after the end of
// the previous Expect or WaitFor match, returns the match and its
// submatches, and moves past it; so consecutive calls follow the console
// in order. It fails with ErrExited, and the console's last lines, if the
// guest ends first, and when ctx ends.
func (m *Machine) Expect(ctx context.Context, re *regexp.Regexp) ([]string, error) {
	for {
		m.mu.Lock()
		rest := m.console.Bytes()[m.cursor:]
		if loc := re.FindSubmatchIndex(rest); loc != nil {
			var subs []string
			for i := 0; i < len(loc); i += 2 {
				if loc[i] < 0 {
					subs = append(subs, "")
					continue
				}
				subs = append(subs, string(rest[loc[i]:loc[i+1]]))
			}
			m.cursor += loc[1]
			m.mu.Unlock()
			return subs, nil
		}
		exit, changed := m.exit, m.changed
		m.mu.Unlock()
		if exit != nil {
			return nil, fmt.Errorf("guest %s: waiting for %q: %w (%s); console ends:\n%s%s",
				m.cfg.Name, re, ErrExited, exit, m.Tail(20), m.stderrNote())
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("guest %s: waiting for %q: %w; console ends:\n%s", m.cfg.Name, re, ctx.Err(), m.Tail(20))
		}
	}
}

// Tail returns the console's last n lines.
func (m *Machine) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(m.ConsoleText(), "\r\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (m *Machine) stderrNote() string {
	if s := strings.TrimSpace(m.Stderr()); s != "" {
		return "\nQEMU stderr: " + s
	}
	return ""
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Pid returns QEMU's process id.
func (m *Machine) Pid() int {
	return m.cmd.Process.Pid
}

// ForwardHelpers returns the process ids of the forward helpers running for
// this guest (one per open forwarded connection).
func (m *Machine) ForwardHelpers() []int {
	return liveHelpers(m.fwdDir)
}
