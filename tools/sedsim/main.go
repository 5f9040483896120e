// Command sedsim serves software self-encrypting drives (TCG Opal 2.0,
// simulated by opalsim) over NVMe/TCP, so a QEMU guest's or this machine's
// Linux kernel sees them as /dev/nvmeXnY and drives Opal on them.
//
// Usage:
//
//	sedsim serve --drives N --size S --state DIR [--listen 127.0.0.1:4420]
//	sedsim list [--state DIR] [--json]
//	sedsim power-cycle [--state DIR] (--drive K | --all)
//	sedsim psid [--state DIR] --drive K
//
// Run "sedsim help COMMAND" for each command's flags.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/sedboot/sedboot/internal/nvmetcp"
	"github.com/sedboot/sedboot/internal/sedsim"
)

const defaultState = "sedsim-state"

type command struct {
	name, args, summary, help string
	run                       func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "--drives N --size S --state DIR [--listen ADDR]", "serve N software SEDs over NVMe/TCP",
			`Serve N persistent software SEDs over NVMe/TCP until interrupted (SIGINT or
SIGTERM flush and close every drive). Drive K lives in DIR/drive-K and keeps
its data, keys and Opal state across restarts; a drive that exists is opened
as after a power cycle, one that does not is created factory-fresh with a
unique serial. Each drive is one NVMe subsystem named
` + sedsim.DefaultNQNPrefix + `<serial>, with one namespace.
A discovery controller (nqn.2014-08.org.nvmexpress.discovery) lists them.
The control socket DIR/` + sedsim.ControlSocketName + ` serves the list, power-cycle and psid
commands.`, runServe},
		{"list", "[--state DIR] [--json]", "list drives with serial, NQN and Opal state",
			`List the drives of the sedsim serving DIR: serial, NQN, size, the Locking
SP's life cycle, whether locking is enabled, which ranges are locked now,
whether SID's credential is still the MSID, and live NVMe/TCP associations.`, runList},
		{"power-cycle", "[--state DIR] (--drive K | --all)", "power-cycle one drive or all",
			`Power-cycle drive K (or every drive): its NVMe/TCP associations end (hosts
reconnect), its Opal sessions drop and ranges with LockOnReset lock.`, runPowerCycle},
		{"psid", "[--state DIR] --drive K", "print a drive's PSID label",
			`Print drive K's PSID as a technician reads it off the drive's label. The
PSID reverts the drive to factory state, erasing all data: treat it like the
physical label it stands for.`, runPSID},
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "sedsim serves software self-encrypting drives (TCG Opal 2.0) over NVMe/TCP.\n\nUsage:\n")
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	for _, c := range commands() {
		fmt.Fprintf(tw, "  sedsim %s %s\t%s\n", c.name, c.args, c.summary)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nRun \"sedsim help COMMAND\" or \"sedsim COMMAND -h\" for details.\n")
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	name := args[0]
	if name == "help" || name == "-h" || name == "--help" {
		if len(args) > 1 {
			for _, c := range commands() {
				if c.name == args[1] {
					_ = c.run(ctx, []string{"-h"}, stdout, stdout)
					return 0
				}
			}
			fmt.Fprintf(stderr, "sedsim: no command %q\n", args[1])
			return 2
		}
		usage(stdout)
		return 0
	}
	for _, c := range commands() {
		if c.name != name {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			return 2
		}
		fmt.Fprintf(stderr, "sedsim %s: %s\n", name, strings.TrimPrefix(err.Error(), "sedsim: "))
		return 1
	}
	fmt.Fprintf(stderr, "sedsim: unknown command %q\n\n", name)
	usage(stderr)
	return 2
}

// errUsage reports a command line error already printed.
var errUsage = errors.New("usage error")

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	var c command
	for _, x := range commands() {
		if x.name == name {
			c = x
		}
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: sedsim %s %s\n\n%s\n\nFlags:\n", c.name, c.args, c.help)
		fs.PrintDefaults()
	}
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "sedsim %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
	return nil
}

// parseSize reads sizes like 512M, 1G, 64MiB or 1048576 (bytes, IEC units).
func parseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B"), "I")
	mult := int64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (1<<50)/mult {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, optionally with K, M, G or T (powers of 1024)", s)
	}
	return n * mult, nil
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve", stderr)
	drives := fs.Int("drives", 4, "number of drives to serve (1 to 64)")
	size := fs.String("size", "", "capacity of each new drive, e.g. 256M or 2G (existing drives keep theirs)")
	blockSize := fs.Int("block-size", sedsim.DefaultBlockSize, "logical block size of new drives (512 or 4096)")
	state := fs.String("state", defaultState, "state directory holding the drives")
	listen := fs.String("listen", sedsim.DefaultListen, "NVMe/TCP listen address (loopback only unless --allow-remote)")
	allowRemote := fs.Bool("allow-remote", false, "allow a listen address outside the loopback network")
	advertise := fs.String("advertise", "", "host:port to put in discovery log entries (default: the address the host connected to)")
	verbose := fs.Bool("v", false, "log every connection and command-level event")
	if err := parse(fs, args); err != nil {
		return err
	}
	var sz int64
	if *size != "" {
		var err error
		if sz, err = parseSize(*size); err != nil {
			return err
		}
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	sim, err := sedsim.Start(ctx, sedsim.Options{
		Drives: *drives, Size: sz, BlockSize: *blockSize, StateDir: *state,
		Listen: *listen, AllowRemote: *allowRemote, Logger: log,
		Target: sedsimTargetOptions(*advertise),
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "sedsim: serving %d drives on %s (state %s)\n", sim.Len(), sim.Addr(), *state)
	printList(stdout, sim.List())
	<-ctx.Done()
	fmt.Fprintf(stdout, "sedsim: stopping: flushing and closing drives\n")
	done := make(chan error, 1)
	go func() { done <- sim.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(time.Minute):
		return errors.New("drives did not close within a minute")
	}
}

func runList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("list", stderr)
	state := fs.String("state", defaultState, "state directory of the running sedsim")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	list, err := sedsim.NewClient(*state).List(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(list)
	}
	printList(stdout, list)
	return nil
}

func printList(w io.Writer, list []sedsim.DriveInfo) {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "DRIVE\tSERIAL\tSIZE\tLOCKING SP\tLOCKING\tLOCKED RANGES\tMSID=SID\tHOSTS\tNQN")
	for _, d := range list {
		locked := "none"
		if len(d.Locked) > 0 {
			var parts []string
			for _, r := range d.Locked {
				if r == 0 {
					parts = append(parts, "global")
				} else {
					parts = append(parts, strconv.Itoa(r))
				}
			}
			locked = strings.Join(parts, ",")
		}
		enabled := "disabled"
		if d.LockingEnabled {
			enabled = "enabled"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", d.Index, d.Serial, humanSize(d.Bytes), d.LockingSP, enabled, locked, d.MSIDIsSID, d.Associations, d.NQN)
	}
	tw.Flush()
}

func humanSize(b uint64) string {
	for _, u := range []struct {
		s string
		n uint64
	}{{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if b >= u.n && b%u.n == 0 {
			return fmt.Sprintf("%d%s", b/u.n, u.s)
		}
	}
	return fmt.Sprintf("%dB", b)
}

func runPowerCycle(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("power-cycle", stderr)
	state := fs.String("state", defaultState, "state directory of the running sedsim")
	drive := fs.Int("drive", -1, "drive to power-cycle")
	all := fs.Bool("all", false, "power-cycle every drive")
	if err := parse(fs, args); err != nil {
		return err
	}
	if (*drive >= 0) == *all {
		fmt.Fprintln(stderr, "sedsim power-cycle: give exactly one of --drive K and --all")
		return errUsage
	}
	k := *drive
	if *all {
		k = -1
	}
	if err := sedsim.NewClient(*state).PowerCycle(ctx, k); err != nil {
		return err
	}
	if *all {
		fmt.Fprintln(stdout, "power-cycled every drive")
	} else {
		fmt.Fprintf(stdout, "power-cycled drive %d\n", k)
	}
	return nil
}

func runPSID(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("psid", stderr)
	state := fs.String("state", defaultState, "state directory of the running sedsim")
	drive := fs.Int("drive", -1, "drive whose label to read")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *drive < 0 {
		fmt.Fprintln(stderr, "sedsim psid: give --drive K")
		return errUsage
	}
	psid, err := sedsim.NewClient(*state).PSID(ctx, *drive)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, psid)
	return nil
}

func sedsimTargetOptions(advertise string) nvmetcp.Options {
	return nvmetcp.Options{AdvertiseAddr: advertise}
}
