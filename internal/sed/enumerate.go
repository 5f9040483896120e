package sed

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/sedboot/sedboot/internal/sed/transport"
)

// Candidate is a drive Enumerate found in sysfs: the device node to Open
// and what sysfs says about it. Whether it speaks Opal is for Discover.
type Candidate struct {
	// Path is the device node to Open: /dev/nvmeN for an NVMe
	// controller, /dev/sdX for a SCSI, SAS or SATA disk.
	Path string
	// Name is the kernel name (nvme0, sda).
	Name string
	Kind transport.Kind
	// Transport is the NVMe transport (pcie, tcp, rdma, fc, loop).
	Transport string
	Model     string
	Serial    string
	Firmware  string
	// WWN is the SCSI logical unit's NAA (or EUI-64) designator from VPD
	// page 0x83.
	WWN []byte
	// Namespaces are an NVMe controller's namespaces.
	Namespaces []Namespace
	// BlockDevices are the device nodes of the drive's block devices
	// (/dev/nvme0n1, /dev/sda).
	BlockDevices []string
}

// Namespace is one NVMe namespace of a controller.
type Namespace struct {
	NSID        uint32
	BlockDevice string
	EUI64       []byte
	NGUID       []byte
	UUID        []byte
}

var (
	reNVMeCtrl = regexp.MustCompile(`^nvme\d+$`)
	reNVMeNS   = regexp.MustCompile(`^nvme\d+n\d+$`)
	reNVMePath = regexp.MustCompile(`^nvme(\d+)c\d+n(\d+)$`)
	reSCSIDisk = regexp.MustCompile(`^sd[a-z]+$`)
)

// Enumerate lists the NVMe controllers and SCSI/SAS/SATA disks under root
// (normally "/"; tests point it at a fake tree), from root/sys/class/nvme
// and root/sys/block, with device nodes under root/dev. It opens no
// device.
func Enumerate(ctx context.Context, root string) ([]Candidate, error) {
	if root == "" {
		root = "/"
	}
	var out []Candidate
	ctrls, err := listDir(filepath.Join(root, "sys/class/nvme"))
	if err != nil {
		return nil, fmt.Errorf("enumerate NVMe controllers: %w", err)
	}
	for _, name := range ctrls {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if !reNVMeCtrl.MatchString(name) {
			continue
		}
		c, err := nvmeCandidate(root, name)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	blocks, err := listDir(filepath.Join(root, "sys/block"))
	if err != nil {
		return nil, fmt.Errorf("enumerate block devices: %w", err)
	}
	for _, name := range blocks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if !reSCSIDisk.MatchString(name) {
			continue
		}
		c, ok, err := scsiCandidate(root, name)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b Candidate) int { return naturalCompare(a.Name, b.Name) })
	return out, nil
}

func nvmeCandidate(root, name string) (Candidate, error) {
	dir := filepath.Join(root, "sys/class/nvme", name)
	c := Candidate{
		Path:      filepath.Join(root, "dev", name),
		Name:      name,
		Kind:      transport.KindNVMe,
		Transport: readAttr(dir, "transport"),
		Model:     readAttr(dir, "model"),
		Serial:    readAttr(dir, "serial"),
		Firmware:  readAttr(dir, "firmware_rev"),
	}
	entries, err := listDir(dir)
	if err != nil {
		return c, fmt.Errorf("read %s: %w", dir, err)
	}
	seen := map[string]bool{}
	for _, e := range entries {
		blk := ""
		switch {
		case reNVMeNS.MatchString(e):
			blk = e
		case reNVMePath.MatchString(e):
			// nvme<subsys>c<ctrl>n<ns> is a path of the multipath head
			// nvme<subsys>n<ns>.
			m := reNVMePath.FindStringSubmatch(e)
			blk = "nvme" + m[1] + "n" + m[2]
		default:
			continue
		}
		if seen[blk] {
			continue
		}
		seen[blk] = true
		ns, err := nvmeNamespace(root, blk)
		if err != nil {
			return c, err
		}
		c.Namespaces = append(c.Namespaces, ns)
	}
	slices.SortFunc(c.Namespaces, func(a, b Namespace) int { return naturalCompare(a.BlockDevice, b.BlockDevice) })
	for _, ns := range c.Namespaces {
		c.BlockDevices = append(c.BlockDevices, ns.BlockDevice)
	}
	return c, nil
}

func nvmeNamespace(root, blk string) (Namespace, error) {
	dir := filepath.Join(root, "sys/block", blk)
	ns := Namespace{BlockDevice: filepath.Join(root, "dev", blk)}
	if v := readAttr(dir, "nsid"); v != "" {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return ns, fmt.Errorf("%s/nsid: %q is not a namespace ID", dir, v)
		}
		ns.NSID = uint32(n)
	} else if i := strings.LastIndexByte(blk, 'n'); i > 0 {
		n, _ := strconv.ParseUint(blk[i+1:], 10, 32)
		ns.NSID = uint32(n)
	}
	var err error
	for _, f := range []struct {
		attr string
		dst  *[]byte
		size int
	}{{"eui", &ns.EUI64, 8}, {"nguid", &ns.NGUID, 16}, {"uuid", &ns.UUID, 16}} {
		if *f.dst, err = parseHexID(readAttr(dir, f.attr), f.size); err != nil {
			return ns, fmt.Errorf("%s/%s: %w", dir, f.attr, err)
		}
	}
	return ns, nil
}

func scsiCandidate(root, name string) (Candidate, bool, error) {
	dev := filepath.Join(root, "sys/block", name, "device")
	if t := readAttr(dev, "type"); t != "0" {
		return Candidate{}, false, nil // not a direct-access block device
	}
	vendor := readAttr(dev, "vendor")
	c := Candidate{
		Path:         filepath.Join(root, "dev", name),
		Name:         name,
		Kind:         transport.KindSCSI,
		Model:        strings.TrimSpace(vendor + " " + readAttr(dev, "model")),
		Firmware:     readAttr(dev, "rev"),
		BlockDevices: []string{filepath.Join(root, "dev", name)},
	}
	if vendor == "ATA" {
		c.Kind = transport.KindSATA
		c.Model = readAttr(dev, "model")
	}
	if raw, err := os.ReadFile(filepath.Join(dev, "vpd_pg80")); err == nil {
		s, err := transport.ParseVPDSerial(raw)
		if err != nil {
			return c, false, fmt.Errorf("%s/vpd_pg80: %w", dev, err)
		}
		c.Serial = s
	}
	if raw, err := os.ReadFile(filepath.Join(dev, "vpd_pg83")); err == nil {
		ds, err := transport.ParseVPDDeviceID(raw)
		if err != nil {
			return c, false, fmt.Errorf("%s/vpd_pg83: %w", dev, err)
		}
		c.WWN = transport.WWNFromDesignators(ds)
	}
	return c, true, nil
}

// listDir returns the names in dir; a missing directory is empty.
func listDir(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}

// readAttr reads a sysfs text attribute, trimmed; "" when absent.
func readAttr(dir, name string) string {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// parseHexID decodes a sysfs identifier printed as hex with optional
// separators ("00 25 38 ...", "e4d25c73-...", "0025388b..."). Empty or
// all-zero values are nil.
func parseHexID(s string, size int) ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	clean := strings.Map(func(r rune) rune {
		if r == ' ' || r == '-' || r == ':' {
			return -1
		}
		return r
	}, s)
	b, err := hex.DecodeString(clean)
	if err != nil {
		return nil, fmt.Errorf("%q is not hex: %w", s, err)
	}
	if len(b) != size {
		return nil, fmt.Errorf("%q is %d bytes, want %d", s, len(b), size)
	}
	return nonZero(b), nil
}

// naturalCompare orders names with numbers by value (nvme2 < nvme10).
func naturalCompare(a, b string) int {
	for a != "" && b != "" {
		da, db := digits(a), digits(b)
		if da > 0 && db > 0 {
			na, _ := strconv.ParseUint(a[:da], 10, 64)
			nb, _ := strconv.ParseUint(b[:db], 10, 64)
			if na != nb {
				if na < nb {
					return -1
				}
				return 1
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return int(a[0]) - int(b[0])
		}
		a, b = a[1:], b[1:]
	}
	return len(a) - len(b)
}

func digits(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}
