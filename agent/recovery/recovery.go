// Package recovery is the boot agent's way out of a failed boot: on the
// console it asks for the technician credential (delayed and counted
// wrong answers, see internal/techauth), starts u-root's shell with sedctl
// on PATH once the credential is right, and asks again when the shell
// exits. It never returns and never starts a shell without a right answer.
package recovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/techauth"
)

// Console lines tests and technicians look for.
const (
	// Banner starts the recovery loop.
	Banner = "sedboot: RECOVERY: the boot did not complete; the drives stay locked"
	// Prompt asks for the credential.
	Prompt = "sedboot: technician credential: "
	// Refused follows a wrong credential.
	Refused = "sedboot: credential refused"
	// Granted precedes the shell.
	Granted = "sedboot: credential accepted: starting the recovery shell (exit to leave)"
	// Closed says the shell cannot be reached this boot.
	Closed = "sedboot: recovery shell closed"
)

// DefaultShell is u-root's shell in the production image.
const DefaultShell = "/bbin/gosh"

// Loop is the recovery loop.
type Loop struct {
	// Technician is the credential setting from the boot medium; nil
	// when it could not be read (the shell then stays closed).
	Technician *config.Technician
	// In and Out are the console (default os.Stdin / os.Stdout). In's
	// echo is switched off while the credential is typed when it is a
	// terminal.
	In  *os.File
	Out io.Writer
	// Shell is the shell to run (default DefaultShell) with Env.
	Shell string
	Env   []string
	// Log receives events; nil discards.
	Log *slog.Logger
	// Sleep waits between wrong answers (default: a timer).
	Sleep func(ctx context.Context, d time.Duration) error
}

// Run runs the loop until ctx ends; as PID 1 it is given a context that
// never ends, so it never returns.
func (l *Loop) Run(ctx context.Context) error {
	in, out := l.In, l.Out
	if in == nil {
		in = os.Stdin
	}
	if out == nil {
		out = os.Stdout
	}
	log := l.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fmt.Fprintln(out, Banner)
	if l.Technician == nil || techauth.Check(l.Technician.Hash) != nil {
		fmt.Fprintln(out, Closed+": no technician credential could be read from the boot medium.")
		fmt.Fprintln(out, "sedboot: attach a boot medium with a valid technician credential (sedctl technician set) and power cycle.")
		log.Error("recovery shell closed: no technician credential")
		<-ctx.Done()
		return ctx.Err()
	}
	gate := &techauth.Gate{Hash: l.Technician.Hash, MaxAttempts: l.Technician.MaxAttempts,
		Delay: l.Technician.Delay.D(0), Sleep: l.Sleep}
	for ctx.Err() == nil {
		fmt.Fprint(out, Prompt)
		answer, err := readSecretLine(in)
		fmt.Fprintln(out)
		if err != nil {
			if errors.Is(err, io.EOF) {
				// No console input (yet): do not spin.
				if serr := sleep(ctx, time.Second); serr != nil {
					return serr
				}
				continue
			}
			fmt.Fprintf(out, "sedboot: console read: %v\n", err)
			if serr := sleep(ctx, time.Second); serr != nil {
				return serr
			}
			continue
		}
		err = gate.Try(ctx, answer)
		switch {
		case err == nil:
			log.Warn("recovery shell opened by a technician")
			fmt.Fprintln(out, Granted)
			if err := l.runShell(in, out); err != nil {
				fmt.Fprintf(out, "sedboot: recovery shell: %v\n", err)
				log.Error("recovery shell", "err", err)
			}
			fmt.Fprintln(out, "sedboot: recovery shell ended")
		case errors.Is(err, techauth.ErrLockedOut):
			fmt.Fprintf(out, "%s: %v\n", Closed, err)
			log.Error("recovery shell locked: too many wrong credentials")
			<-ctx.Done()
			return ctx.Err()
		case errors.Is(err, techauth.ErrWrong):
			log.Warn("wrong technician credential", "wrong", gate.Wrong(), "remaining", gate.Remaining())
			fmt.Fprintf(out, "%s (%d attempt(s) left this boot)\n", Refused, gate.Remaining())
		default:
			fmt.Fprintf(out, "sedboot: %v\n", err)
		}
	}
	return ctx.Err()
}

// readSecretLine reads one line from in, byte by byte (nothing is left
// buffered for the shell), with echo off when in is a terminal.
func readSecretLine(in *os.File) (string, error) {
	fd := int(in.Fd())
	if t, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
		quiet := *t
		quiet.Lflag &^= unix.ECHO
		quiet.Lflag |= unix.ICANON | unix.ECHONL
		if unix.IoctlSetTermios(fd, unix.TCSETS, &quiet) == nil {
			defer unix.IoctlSetTermios(fd, unix.TCSETS, t)
		}
	}
	var line []byte
	b := make([]byte, 1)
	for len(line) < 4096 {
		n, err := in.Read(b)
		if n == 1 {
			switch b[0] {
			case '\n':
				return strings.TrimRight(string(line), "\r"), nil
			case '\r':
				return string(line), nil
			default:
				line = append(line, b[0])
			}
			continue
		}
		if err != nil {
			if len(line) > 0 && errors.Is(err, io.EOF) {
				return string(line), nil
			}
			return "", err
		}
	}
	return "", errors.New("line too long")
}

// runShell runs the shell on the console in a new session with the
// console as its controlling terminal, reaping every process that ends
// meanwhile (the agent is PID 1: orphans become its children).
func (l *Loop) runShell(in *os.File, out io.Writer) error {
	shell := l.Shell
	if shell == "" {
		shell = DefaultShell
	}
	env := l.Env
	if env == nil {
		env = []string{"PATH=/bin:/bbin:/sbin:/usr/bin", "HOME=/", "TERM=linux", "PS1=recovery# "}
	}
	outFile, ok := out.(*os.File)
	if !ok {
		outFile = os.Stdout
	}
	_, isTTY := unix.IoctlGetTermios(int(in.Fd()), unix.TCGETS)
	attr := &syscall.ProcAttr{
		Dir:   "/",
		Env:   env,
		Files: []uintptr{in.Fd(), outFile.Fd(), outFile.Fd()},
		Sys:   &syscall.SysProcAttr{Setsid: true, Setctty: isTTY == nil, Ctty: 0},
	}
	pid, err := syscall.ForkExec(shell, []string{shell}, attr)
	if err != nil {
		return fmt.Errorf("start %s: %w", shell, err)
	}
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("wait for %s: %w", shell, err)
		}
		if got == pid {
			if ws.Exited() && ws.ExitStatus() != 0 {
				return fmt.Errorf("%s exited with status %d", shell, ws.ExitStatus())
			}
			return nil
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
