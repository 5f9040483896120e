package boot

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sedboot/sedboot/agent/steps"
)

// Ext is what an ext2/3/4 superblock says about a file system.
type Ext struct {
	UUID  string // canonical lower-case 8-4-4-4-12 form
	Label string
}

// ext superblock layout (all little-endian), at byte 1024 of the device.
const (
	extSuperOffset = 1024
	extMagicOff    = 0x38
	extMagic       = 0xEF53
	extUUIDOff     = 0x68
	extLabelOff    = 0x78
	extLabelLen    = 16
)

// ErrNotExt reports a device without an ext2/3/4 superblock.
var ErrNotExt = errors.New("no ext2/3/4 superblock")

// ReadExt reads the ext2/3/4 superblock from r (a block device or image).
func ReadExt(r io.ReaderAt) (Ext, error) {
	sb := make([]byte, 256)
	if _, err := r.ReadAt(sb, extSuperOffset); err != nil {
		return Ext{}, err
	}
	if binary.LittleEndian.Uint16(sb[extMagicOff:]) != extMagic {
		return Ext{}, ErrNotExt
	}
	u := sb[extUUIDOff : extUUIDOff+16]
	h := hex.EncodeToString(u)
	label := sb[extLabelOff : extLabelOff+extLabelLen]
	if i := bytes.IndexByte(label, 0); i >= 0 {
		label = label[:i]
	}
	return Ext{
		UUID:  h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32],
		Label: string(label),
	}, nil
}

// stepRoot finds the real root file system by UUID or label on the block
// devices that are readable now (never on the boot medium or on a drive
// that stays locked), mounts it on NewRoot and checks its init.
func (a *Agent) stepRoot(ctx context.Context) error {
	r := a.doc.Root
	want := "UUID=" + r.UUID
	if r.UUID == "" {
		want = "LABEL=" + r.Label
	}
	var dev string
	delay := 20 * time.Millisecond
	for {
		var err error
		dev, err = a.findRoot()
		if err != nil {
			return err
		}
		if dev != "" {
			break
		}
		select {
		case <-ctx.Done():
			return steps.WithHint(fmt.Errorf("no file system with %s on any readable block device: %w", want, ctx.Err()),
				"root.uuid / root.label on the boot medium names the real OS's file system, and the drive holding it unlocked")
		case <-time.After(delay):
			delay = min(2*delay, 250*time.Millisecond)
		}
	}
	if err := os.MkdirAll(NewRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dev, NewRoot, r.FSType, 0, r.Options); err != nil {
		return steps.WithHint(fmt.Errorf("mount %s (%s) on %s as %s: %w", dev, want, NewRoot, r.FSType, err),
			"root.fstype and root.options on the boot medium; the kernel supports that file system")
	}
	init := filepath.Join(NewRoot, r.Init)
	st, err := os.Stat(init)
	if err != nil || st.Mode()&0o111 == 0 || st.IsDir() {
		unix.Unmount(NewRoot, 0)
		if err == nil {
			err = errors.New("not an executable file")
		}
		return steps.WithHint(fmt.Errorf("real init %s on %s: %w", r.Init, dev, err), "root.init on the boot medium names the real OS's init")
	}
	a.rootDev, a.rootInit = dev, r.Init
	a.Printf("  %s (%s) mounted on %s", dev, want, NewRoot)
	return nil
}

// findRoot returns the device holding the configured root file system, or
// "" when none does (yet).
func (a *Agent) findRoot() (string, error) {
	entries, err := os.ReadDir("/sys/class/block")
	if err != nil {
		return "", fmt.Errorf("list block devices: %w", err)
	}
	blocked := map[string]bool{}
	for name := range a.mediumDevs {
		blocked[name] = true
	}
	for _, d := range a.drives {
		if d.opalLocked() || (d.keyed && !d.unlockd) {
			for _, b := range d.cand.BlockDevices {
				blocked[filepath.Base(b)] = true
			}
		}
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	r := a.doc.Root
	for _, name := range names {
		if blocked[name] || blocked[parentDisk(name)] || strings.HasPrefix(name, "loop") || strings.HasPrefix(name, "ram") {
			continue
		}
		if ok, _ := matchExt("/dev/"+name, r.UUID, r.Label); ok {
			return "/dev/" + name, nil
		}
	}
	return "", nil
}

// parentDisk returns the whole disk of a partition's block device name, or
// "" for a whole disk.
func parentDisk(name string) string {
	if _, err := os.Stat(filepath.Join("/sys/class/block", name, "partition")); err != nil {
		return ""
	}
	p, err := filepath.EvalSymlinks(filepath.Join("/sys/class/block", name))
	if err != nil {
		return ""
	}
	return filepath.Base(filepath.Dir(p))
}

func matchExt(dev, uuid, label string) (bool, error) {
	f, err := os.Open(dev)
	if err != nil {
		return false, err
	}
	defer f.Close()
	e, err := ReadExt(f)
	if err != nil {
		return false, err
	}
	if uuid != "" {
		return strings.EqualFold(e.UUID, uuid), nil
	}
	return label != "" && e.Label == label, nil
}
