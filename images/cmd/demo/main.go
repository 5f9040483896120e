// Command demo shows sedboot end to end on one machine, with nothing but
// 127.0.0.1 and a QEMU guest: it builds the boot image, creates software
// SEDs served over NVMe/TCP, a kmsd key server with a development PKI and a
// tiny real OS on one SED, provisions the array, boots a controller that
// unlocks every drive and hands over to the real OS, then revokes the
// array's access on the key server and boots again: the controller stops
// at the recovery shell with every drive locked.
//
// Run it through `make demo` (which installs the prerequisites, fetches
// the kernel and builds this program into bin/).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/sedboot/sedboot/images/kernel"
	"github.com/sedboot/sedboot/images/qemu"
	"github.com/sedboot/sedboot/images/rig"
	"github.com/sedboot/sedboot/initramfs"
)

const (
	array      = "DEMO-ARRAY-01"
	technician = "demo technician 2026"
)

func main() {
	drives := flag.Int("drives", 4, "number of software SEDs")
	keep := flag.Bool("keep", false, "keep the work directory")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *drives, *keep); err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo: FAILED: %v\n", err)
		os.Exit(1)
	}
}

var stage = 0

func say(format string, args ...any) {
	stage++
	fmt.Printf("\n\033[1m== %d. %s\033[0m\n", stage, fmt.Sprintf(format, args...))
}

func note(format string, args ...any) { fmt.Printf("   %s\n", fmt.Sprintf(format, args...)) }

func run(ctx context.Context, n int, keep bool) error {
	src, err := kernel.SourceRoot()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "sedboot-demo-")
	if err != nil {
		return err
	}
	if keep {
		note("work directory: %s", work)
	} else {
		defer os.RemoveAll(work)
	}

	say("Build the controller's boot image: Debian's 6.12 cloud kernel + the sedboot initramfs")
	kdir, err := kernel.DefaultCacheDir()
	if err != nil {
		return err
	}
	k, err := kernel.Ensure(ctx, kdir)
	if err != nil {
		return err
	}
	note("kernel %s", k.Version)
	img, err := initramfs.BuildProduction(ctx, k, initramfs.Spec{Dir: src, Level: 19})
	if err != nil {
		return err
	}
	note("initramfs: %.1f MB (zstd), %.1f MB unpacked: the agent as /init, sedctl, u-root's gosh and core tools, nvme-tcp and virtio-net modules",
		float64(img.Size)/1e6, float64(img.RawSize)/1e6)

	say("Build a tiny real OS (a static init on ext4) to live on an encrypted drive")
	root, err := rig.BuildRootFS(ctx, src, work, "REALOS")
	if err != nil {
		return err
	}
	note("root file system UUID %s, label %s", root.UUID, root.Label)

	say("Create %d software SEDs (TCG Opal 2 simulators) served over NVMe/TCP on 127.0.0.1", n)
	r, err := rig.New(rig.Options{Drives: n, RootImage: root.Path})
	if err != nil {
		return err
	}
	defer r.Close()
	for _, d := range r.Drives {
		extra := ""
		if d == r.Drives[0] {
			extra = "  <- holds the real OS"
		}
		note("%s  %s%s", d.Serial, d.NQN, extra)
	}
	note("NVMe/TCP target on %s", r.Addr)

	say("Start kmsd, the KMIP key server, with a development PKI (mutual TLS)")
	kmsd, err := rig.StartKMSD(work, "kmsd-a", array, nil)
	if err != nil {
		return err
	}
	defer kmsd.Close()
	note("kmsd on %s; identities: %s (the array), admin", kmsd.Addr, rig.ArrayIdentity(array))

	say("Enable encryption as `sedctl enable` does: the boot medium (identity, key servers, certificates, network, root; never keys), a random 256-bit key per drive on kmsd, each SED owned with PINs derived from its key, lock on power cycle, every step journaled")
	medium := filepath.Join(work, "medium.img")
	p, err := r.Provision(ctx, &kmsd.KeyServer, medium, rig.DocOptions{Array: array, RootUUID: root.UUID, Technician: technician,
		Servers: []rig.GuestServer{{KS: &kmsd.KeyServer, GuestAddr: fmt.Sprintf("%s:%d", rig.GuestHost, rig.KMIPPort)}}})
	if err != nil {
		return err
	}
	for _, dk := range p.Generation.Drives {
		note("%s  key %s", dk.Drive, dk.Name)
	}
	note("boot medium image %s (attached to the guest as an NVMe drive) holds the key inventory", medium)
	if err := r.PowerCycle(ctx); err != nil {
		return err
	}
	note("power cycle: %d of %d drives locked", r.Locked(), n)

	say("Power on the controller (QEMU): the agent unlocks every drive and hands over to the real OS")
	guest := func(name string) qemu.Config {
		return r.Guest(rig.GuestOptions{Name: name, Kernel: k.BootImage(), Initrd: img.Path, Medium: medium,
			KMIP: map[string]string{rig.GuestHost: kmsd.Addr}})
	}
	m, err := qemu.Start(ctx, guest("controller"))
	if err != nil {
		return err
	}
	if err := follow(ctx, m, regexp.MustCompile(`REALOS done|RECOVERY`), 3*time.Minute); err != nil {
		m.Close()
		return err
	}
	if _, err := m.Wait(ctx); err != nil {
		return err
	}
	m.Close()
	if !strings.Contains(m.ConsoleText(), "REALOS done") {
		return fmt.Errorf("the first boot did not reach the real OS")
	}
	note("the real OS ran as PID 1, read the boot record, wrote its data and powered off")

	say("Revoke the array's access on kmsd (its keys made non-extractable by the administrator), power cycle")
	if err := p.Revoke(ctx, &kmsd.KeyServer); err != nil {
		return err
	}
	if err := r.PowerCycle(ctx); err != nil {
		return err
	}
	note("%d of %d drives locked", r.Locked(), n)

	say("Power on again: the key server refuses, no drive unlocks, the boot stops at the recovery shell")
	m2, err := qemu.Start(ctx, guest("controller-2"))
	if err != nil {
		return err
	}
	defer m2.Close()
	if err := follow(ctx, m2, regexp.MustCompile(`technician credential: `), 3*time.Minute); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	m2.Close()
	note("drives still locked: %d of %d; the real OS never ran", r.Locked(), n)
	say("Done: sedboot unlocked the array when the key server allowed it, and kept it locked when the key server refused")
	return nil
}

// follow prints the guest's console as it grows (without the kernel's own
// timestamped lines) until re appears or the guest ends.
func follow(ctx context.Context, m *qemu.Machine, re *regexp.Regexp, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	printed := 0
	var pending string
	ended := false
	for {
		// Once the guest has ended, its console is complete: one last
		// look before giving up.
		select {
		case <-m.Done():
			ended = true
		default:
		}
		text := m.ConsoleText()
		if len(text) > printed {
			pending += text[printed:]
			printed = len(text)
			for {
				i := strings.IndexByte(pending, '\n')
				if i < 0 {
					break
				}
				line := strings.TrimRight(pending[:i], "\r")
				pending = pending[i+1:]
				if !kernelLine.MatchString(line) && strings.TrimSpace(line) != "" {
					fmt.Printf("   | %s\n", line)
				}
			}
		}
		if re.MatchString(text) {
			if pending != "" {
				fmt.Printf("   | %s\n", pending)
			}
			return nil
		}
		if ended {
			return fmt.Errorf("the guest ended before %q", re)
		}
		select {
		case <-m.Done():
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %q within %s", re, limit)
		}
	}
}

var kernelLine = regexp.MustCompile(`^\s*\[\s*\d+\.\d+\]`)
