// Command sedboot-agent is the boot agent: the initramfs's /init (PID 1).
// It runs the boot (package agent/boot): early mounts, boot medium,
// modules, network, fabrics, drives, keys, unlock, real root; then
// switch_root to the real init. When the boot cannot complete, every drive
// stays locked and the agent runs the authenticated recovery loop (package
// agent/recovery) for ever: it never exits and never falls through to a
// shell without the technician credential.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sedboot/sedboot/agent/boot"
	"github.com/sedboot/sedboot/agent/bootrecord"
	"github.com/sedboot/sedboot/agent/recovery"
)

func main() {
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
