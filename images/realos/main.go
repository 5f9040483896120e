// Command realos is the "real OS" of sedboot's boot tests and demo: a
// static program installed as /sbin/init on a root file system that lives
// on a simulated SED. After the agent's switch_root it proves it runs as
// PID 1 on the real root, reads the boot record the agent left in /run,
// counts its boots in a file on the root (data that must survive power
// cycles of the encrypted drive), reports on the console and powers off.
//
// Console lines (each starts with Marker):
//
//	REALOS hello: pid 1, root <dev>
//	REALOS record-json: <the boot record, compact JSON>
//	REALOS record: outcome switch_root, drives <n> unlocked <m>, total <dur>
//	REALOS boots: <n>
//	REALOS done
//
// or "REALOS fail: <reason>".
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Marker starts every console line.
const Marker = "REALOS"

// BootsFile counts the boots on the root file system.
const BootsFile = "/var/lib/realos/boots"

type record struct {
	Outcome string `json:"outcome"`
	Total   int64  `json:"total_ns"`
	Drives  []struct {
		Serial string `json:"serial"`
		Result string `json:"result"`
	} `json:"drives"`
}

func main() {
	if err := run(); err != nil {
		fmt.Printf("%s fail: %v\n", Marker, err)
	} else {
		fmt.Printf("%s done\n", Marker)
	}
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	for {
		time.Sleep(time.Hour)
	}
}

func run() error {
	if os.Getpid() != 1 {
		return fmt.Errorf("running as pid %d, not 1", os.Getpid())
	}
	root := "?"
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, l := range strings.Split(string(mi), "\n") {
			f := strings.Fields(l)
			if len(f) > 9 && f[4] == "/" {
				if i := indexOf(f, "-"); i > 0 && i+2 < len(f) {
					root = f[i+2] + " (" + f[i+1] + ")"
				}
			}
		}
	} else {
		return fmt.Errorf("/proc not mounted after switch_root: %v", err)
	}
	fmt.Printf("%s hello: pid %d, root %s\n", Marker, os.Getpid(), root)
	b, err := os.ReadFile("/run/sedboot/boot-record.json")
	if err != nil {
		return fmt.Errorf("boot record: %w", err)
	}
	var rec record
	var compact bytes.Buffer
	if err := json.Compact(&compact, b); err != nil {
		return fmt.Errorf("boot record: %w", err)
	}
	fmt.Printf("%s record-json: %s\n", Marker, compact.Bytes())
	if err := json.Unmarshal(b, &rec); err != nil {
		return fmt.Errorf("boot record: %w", err)
	}
	unlocked := 0
	for _, d := range rec.Drives {
		if d.Result == "unlocked" {
			unlocked++
		}
	}
	fmt.Printf("%s record: outcome %s, drives %d unlocked %d, total %s\n", Marker, rec.Outcome, len(rec.Drives), unlocked,
		time.Duration(rec.Total).Round(time.Millisecond))
	if err := os.MkdirAll("/var/lib/realos", 0o755); err != nil {
		return err
	}
	n := 0
	if b, err := os.ReadFile(BootsFile); err == nil {
		n, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	n++
	f, err := os.Create(BootsFile)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(f, "%d\n", n); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	back, err := os.ReadFile(BootsFile)
	if err != nil || strings.TrimSpace(string(back)) != strconv.Itoa(n) {
		return fmt.Errorf("read back %s: %q, %v", BootsFile, back, err)
	}
	fmt.Printf("%s boots: %d\n", Marker, n)
	// Remount read-only so the file system is clean at power-off.
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		fmt.Printf("%s note: remount read-only: %v\n", Marker, err)
	}
	return nil
}

func indexOf(f []string, s string) int {
	for i, x := range f {
		if x == s {
			return i
		}
	}
	return -1
}
