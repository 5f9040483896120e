// Package cli is sedctl, the administration program of sedboot on a
// storage controller: it reports drive and key state, tests key servers,
// enables encryption, rotates, backs up and locks keys, and rehearses the
// boot path. It runs from the live OS (tools/sedctl) or from the agent's
// recovery shell, where the boot agent's binary runs it when called as
// "sedctl" (one program in the image instead of two).
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/sedboot/sedboot/internal/sed"
)

// command is one sedctl subcommand.
type command struct {
	name    string // may contain a space: "kms check"
	summary string
	run     func(ctx context.Context, env *env, args []string) error
}

// env is what every command gets: its streams, for testing.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// getenv reads the environment (os.Getenv in production).
	getenv func(string) string
	// drives, when set, supplies the drives instead of enumerating the
	// machine's (tests pass simulated drives).
	drives func(ctx context.Context) ([]*sed.Drive, error)
}

// exitError carries an exit status without an extra message.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// usageError marks a command-line mistake (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func commands() []command {
	return []command{
		{"medium init", "write a new boot-medium document from a JSON file", cmdMediumInit},
		{"medium show", "print the boot-medium document (the client key redacted)", cmdMediumShow},
		{"medium export", "write the boot-medium document to a JSON file for editing", cmdMediumExport},
		{"medium import", "replace the boot-medium document with an edited JSON file", cmdMediumImport},
		{"technician set", "set the recovery-shell technician credential", cmdTechnicianSet},
		{"drives", "list the drives with model, serial, path, Opal state and lock state", cmdDrives},
		{"kms check", "test every key server: TLS, KMIP, and what it supports and enforces", cmdKMSCheck},
		{"enable", "enable encryption (irreversible): per-drive keys on the key servers", cmdEnable},
		{"status", "mode, key generation, drives and key servers", cmdStatus},
		{"rotate", "replace every drive's key with a new generation (journaled, live)", cmdRotate},
		{"backup create", "write the array's keys to a passphrase-protected file", cmdBackupCreate},
		{"backup restore", "register the keys of a backup file on the key servers", cmdBackupRestore},
		{"lock", "cryptographic lock: make the key servers stop releasing the keys, and prove it", cmdLock},
		{"unlock", "undo the cryptographic lock where reversible, and prove it", cmdUnlock},
		{"preflight", "rehearse the boot path without changing anything", cmdPreflight},
		{"unlock-drive", "unlock a drive with its key from a backup file (recovery shell)", cmdUnlockDrive},
	}
}

// Main runs sedctl with args (without the program name) on the process's
// standard streams and environment, until it ends or the process is
// interrupted, and returns the exit status.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	e := &env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	return run(ctx, e, args)
}

// run dispatches args to a command and returns the exit status.
func run(ctx context.Context, e *env, args []string) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(e.stdout, cmds)
		return 0
	}
	var match *command
	var rest []string
	for i := range cmds {
		words := strings.Fields(cmds[i].name)
		if len(args) >= len(words) && strings.Join(args[:len(words)], " ") == cmds[i].name {
			if match == nil || len(strings.Fields(match.name)) < len(words) {
				match, rest = &cmds[i], args[len(words):]
			}
		}
	}
	if match == nil {
		fmt.Fprintf(e.stderr, "sedctl: unknown command %q\n\n", strings.Join(args, " "))
		usage(e.stderr, cmds)
		return 2
	}
	err := match.run(ctx, e, rest)
	var ue usageError
	var xe exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &xe):
		return xe.code
	case errors.As(err, &ue):
		fmt.Fprintf(e.stderr, "sedctl %s: %s\n", match.name, ue.msg)
		return 2
	}
	fmt.Fprintf(e.stderr, "sedctl %s: %v\n", match.name, err)
	return 1
}

func usage(w io.Writer, cmds []command) {
	fmt.Fprintln(w, "usage: sedctl <command> [flags]   (sedctl <command> -h for its flags)")
	fmt.Fprintln(w)
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].name < cmds[j].name })
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-16s %s\n", c.name, c.summary)
	}
}
