// Command sedboot-agent is the boot agent: the initramfs's /init (PID 1).
// It runs the boot (package agent/boot): early mounts, boot medium,
// modules, network, fabrics, drives, keys, unlock, real root; then
// switch_root to the real init. When the boot cannot complete, every drive
// stays locked and the agent runs the authenticated recovery loop (package
// agent/recovery) for ever: it never exits and never falls through to a
// shell without the technician credential.
//
// The same binary is sedctl (package tools/sedctl/cli) when it is called
// by that name: the production image's /bin/sedctl is a symbolic link to
// /init, so the recovery shell has sedctl without a second copy of the Go
// runtime and the libraries both programs use.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sedboot/sedboot/agent/boot"
	"github.com/sedboot/sedboot/agent/bootrecord"
	"github.com/sedboot/sedboot/agent/recovery"
	"github.com/sedboot/sedboot/tools/sedctl/cli"
)

// sedctlName is the program name under which the binary runs sedctl.
const sedctlName = "sedctl"

func main() {
	if filepath.Base(os.Args[0]) == sedctlName {
		os.Exit(cli.Main(os.Args[1:]))
	}
	rec := bootrecord.New(time.Now())
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "sedboot-agent: not PID 1: this program is the initramfs's /init and does not run on a live system")
		os.Exit(2)
	}
	// The process holds keys: never dumpable.
	unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
	ctx := context.Background()
	a := boot.New(boot.Options{Record: rec, KernelLog: true})
	if err := a.Run(ctx); err == nil {
		a.Printf("internal error: the boot returned without switching root")
	}
	loop := &recovery.Loop{Technician: a.Technician(), Log: a.Log()}
	for {
		// Run returns only if its context ends, which this one never
		// does; PID 1 must not exit in any case.
		loop.Run(ctx)
		time.Sleep(time.Minute)
	}
}
