// Package nvmeof connects this host to NVMe over Fabrics (TCP) targets
// through the kernel's fabrics driver, the way nvme-cli does: an options
// string written to /dev/nvme-fabrics, answered with
// "instance=N,cntlid=M"; discovery by connecting to the discovery NQN and
// reading its log page (Get Log Page 70h through the admin passthrough
// ioctl on /dev/nvmeN); disconnect through
// /sys/class/nvme/nvmeN/delete_controller.
//
// It needs the nvme-fabrics and nvme-tcp modules loaded (see
// internal/kmod), CAP_SYS_ADMIN, and devtmpfs and sysfs mounted.
package nvmeof

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sedboot/sedboot/internal/earlyfs"
	"golang.org/x/sys/unix"
)

// Controller is an NVMe controller the kernel created for a connection.
type Controller struct {
	Name     string `json:"name"` // "nvme3"
	Instance int    `json:"instance"`
	CntlID   int    `json:"cntlid"`
	// Existing is set when Connect found the controller already connected
	// (the kernel refused a duplicate) instead of creating it.
	Existing bool `json:"existing,omitempty"`
}

// Device is the controller's character device, e.g. /dev/nvme3.
func (c Controller) Device() string { return "/dev/" + c.Name }

var ctrlNameRE = regexp.MustCompile(`^nvme[0-9]+$`)

// Host talks to the kernel's fabrics driver. The zero value uses the
// standard paths.
type Host struct {
	// FabricsDev is the fabrics control device; "" means /dev/nvme-fabrics.
	FabricsDev string
	// SysClass is the NVMe controller class directory; "" means
	// /sys/class/nvme.
	SysClass string
	// DevDir holds the device nodes; "" means /dev.
	DevDir string
	// Logger gets progress lines; nil means slog.Default().
	Logger *slog.Logger
}

func (h *Host) fabricsDev() string { return or(h.FabricsDev, "/dev/nvme-fabrics") }
func (h *Host) sysClass() string   { return or(h.SysClass, "/sys/class/nvme") }
func (h *Host) devDir() string     { return or(h.DevDir, "/dev") }
func (h *Host) log() *slog.Logger {
	if h.Logger != nil {
		return h.Logger
	}
	return slog.Default()
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Connect asks the kernel to connect to t and returns the new controller.
// It waits (bounded by ctx) for /dev/nvme-fabrics to appear, since the
// module may just have been loaded. The kernel's connect cannot be
// interrupted: if ctx ends first, Connect returns ctx's error and a
// controller that comes up later is disconnected again. If the kernel
// reports the target already connected, the existing controller is
// returned with Existing set.
func (h *Host) Connect(ctx context.Context, t Target) (Controller, error) {
	opts, err := t.Options()
	if err != nil {
		return Controller{}, err
	}
	if _, err := earlyfs.WaitPath(ctx, h.fabricsDev()); err != nil {
		return Controller{}, fmt.Errorf("nvmeof: connect %s: fabrics driver not ready (nvme-fabrics and nvme-%s loaded?): %w", t, t.transport(), err)
	}
	start := time.Now()
	type result struct {
		c   Controller
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := h.writeConnect(opts)
		done <- result{c, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		go func() {
			late := <-done
			if late.err == nil {
				h.log().Warn("nvmeof: connect finished after its deadline; disconnecting", "target", t.String(), "controller", late.c.Name)
				dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				_ = h.Disconnect(dctx, late.c)
			}
		}()
		return Controller{}, fmt.Errorf("nvmeof: connect %s: %w", t, ctx.Err())
	}
	if errors.Is(r.err, unix.EALREADY) {
		c, ok, ferr := h.FindController(t)
		if ferr != nil {
			return Controller{}, fmt.Errorf("nvmeof: connect %s: already connected, but: %w", t, ferr)
		}
		if !ok {
			return Controller{}, fmt.Errorf("nvmeof: connect %s: kernel says already connected, yet no matching controller in %s", t, h.sysClass())
		}
		c.Existing = true
		h.log().Info("nvmeof: already connected", "target", t.String(), "controller", c.Name)
		return c, nil
	}
	if r.err != nil {
		return Controller{}, fmt.Errorf("nvmeof: connect %s: %w", t, describe(r.err))
	}
	h.log().Info("nvmeof: connected", "target", t.String(), "controller", r.c.Name, "cntlid", r.c.CntlID,
		"duration", time.Since(start).Round(time.Microsecond))
	return r.c, nil
}

// writeConnect does the blocking write/read on the fabrics device.
func (h *Host) writeConnect(opts string) (Controller, error) {
	f, err := os.OpenFile(h.fabricsDev(), os.O_RDWR, 0)
	if err != nil {
		return Controller{}, err
	}
	defer f.Close()
	if _, err := f.Write([]byte(opts)); err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return Controller{}, err
	}
	buf := make([]byte, 512)
	n, err := f.Read(buf)
	if err != nil {
		return Controller{}, fmt.Errorf("read answer from %s: %w", h.fabricsDev(), err)
	}
	return ParseConnectResponse(string(buf[:n]))
}

// describe adds the usual meaning of errno values from a fabrics connect.
func describe(err error) error {
	var hint string
	switch {
	case errors.Is(err, unix.ECONNREFUSED):
		hint = "nothing listens on the target port"
	case errors.Is(err, unix.EINVAL):
		hint = "kernel rejected the options or the target refused the connect (see the kernel log)"
	case errors.Is(err, unix.EIO):
		hint = "target answered with an error (wrong NQN, or host not allowed?)"
	case errors.Is(err, unix.ETIMEDOUT):
		hint = "no answer from the target"
	case errors.Is(err, unix.ENETUNREACH), errors.Is(err, unix.EHOSTUNREACH):
		hint = "no route to the target (network up?)"
	default:
		return err
	}
	return fmt.Errorf("%w: %s", err, hint)
}

// Disconnect removes controller c (delete_controller in sysfs).
func (h *Host) Disconnect(ctx context.Context, c Controller) error {
	if !ctrlNameRE.MatchString(c.Name) {
		return fmt.Errorf("nvmeof: disconnect: %q is not a controller name like nvme3", c.Name)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("nvmeof: disconnect %s: %w", c.Name, err)
	}
	p := filepath.Join(h.sysClass(), c.Name, "delete_controller")
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("nvmeof: disconnect %s: %w", c.Name, err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("1")); err != nil {
		return fmt.Errorf("nvmeof: disconnect %s: %w", c.Name, err)
	}
	h.log().Info("nvmeof: disconnected", "controller", c.Name)
	return nil
}

// FindController looks in sysfs for a live controller connected to t
// (same transport, subsystem NQN, address and port).
func (h *Host) FindController(t Target) (Controller, bool, error) {
	entries, err := os.ReadDir(h.sysClass())
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Controller{}, false, nil
		}
		return Controller{}, false, fmt.Errorf("nvmeof: list controllers: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if !ctrlNameRE.MatchString(name) {
			continue
		}
		dir := filepath.Join(h.sysClass(), name)
		read := func(attr string) string {
			b, _ := os.ReadFile(filepath.Join(dir, attr))
			return strings.TrimSpace(string(b))
		}
		if read("transport") != t.transport() || read("subsysnqn") != t.NQN {
			continue
		}
		addr := ParseAddressAttr(read("address"))
		if addr["traddr"] != t.Address || addr["trsvcid"] != strconv.Itoa(t.port()) {
			continue
		}
		inst, _ := strconv.Atoi(strings.TrimPrefix(name, "nvme"))
		cntlid, _ := strconv.Atoi(read("cntlid"))
		return Controller{Name: name, Instance: inst, CntlID: cntlid}, true, nil
	}
	return Controller{}, false, nil
}

// ParseAddressAttr parses a controller's sysfs "address" attribute, e.g.
// "traddr=192.0.2.7,trsvcid=4420,src_addr=192.0.2.2".
func ParseAddressAttr(s string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Split(strings.TrimSpace(s), ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// Discover connects to the discovery controller at t (NQN set to
// DiscoveryNQN; port 8009 unless given), reads its discovery log page and
// disconnects. It returns the entries of a consistent log (re-read while
// the generation counter changes, up to three times).
func (h *Host) Discover(ctx context.Context, t Target) ([]LogEntry, error) {
	t.NQN = DiscoveryNQN
	c, err := h.Connect(ctx, t)
	if err != nil {
		return nil, err
	}
	if !c.Existing {
		defer func() {
			// Disconnect even when ctx has ended: a leftover discovery
			// controller would keep reconnecting.
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if err := h.Disconnect(dctx, c); err != nil {
				h.log().Warn("nvmeof: discovery controller left connected", "controller", c.Name, "err", err)
			}
		}()
	}
	dev := filepath.Join(h.devDir(), c.Name)
	if _, err := earlyfs.WaitPath(ctx, dev); err != nil {
		return nil, fmt.Errorf("nvmeof: discover %s: %w", t, err)
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("nvmeof: discover %s: %w", t, err)
	}
	defer f.Close()
	fd := int(f.Fd())
	for range 3 {
		hdr, err := getLog(ctx, fd, logIDDiscovery, discHeaderSize)
		if err != nil {
			return nil, fmt.Errorf("nvmeof: discover %s via %s: %w", t, c.Name, err)
		}
		gen, numrec, err := discHeader(hdr)
		if err != nil {
			return nil, err
		}
		if numrec > maxDiscRecords {
			return nil, fmt.Errorf("nvmeof: discover %s: log claims %d records (more than %d)", t, numrec, maxDiscRecords)
		}
		page, err := getLog(ctx, fd, logIDDiscovery, discHeaderSize+int(numrec)*discEntrySize)
		if err != nil {
			return nil, fmt.Errorf("nvmeof: discover %s via %s: %w", t, c.Name, err)
		}
		gen2, entries, err := ParseDiscoveryLog(page)
		if err != nil {
			return nil, fmt.Errorf("nvmeof: discover %s: %w", t, err)
		}
		if gen2 == gen {
			h.log().Info("nvmeof: discovered", "target", t.String(), "entries", len(entries))
			return entries, nil
		}
	}
	return nil, fmt.Errorf("nvmeof: discover %s: log kept changing (generation counter) over 3 reads", t)
}

// WaitNamespaces waits (bounded by ctx, or earlyfs.DefaultWaitLimit if ctx
// has no deadline) until controller c has at least want namespaces and
// their block devices exist, and returns the device paths, e.g.
// ["/dev/nvme1n1"]. With native NVMe multipath (Debian's kernels) the
// block device is named after the subsystem, not the controller: a
// controller nvme2 may serve /dev/nvme1n1; this finds the right name from
// the controller's sysfs entries.
func (h *Host) WaitNamespaces(ctx context.Context, c Controller, want int) ([]string, error) {
	if !ctrlNameRE.MatchString(c.Name) {
		return nil, fmt.Errorf("nvmeof: %q is not a controller name like nvme3", c.Name)
	}
	if want < 1 {
		want = 1
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, earlyfs.DefaultWaitLimit)
		defer cancel()
	}
	start := time.Now()
	if _, err := earlyfs.WaitPath(ctx, filepath.Join(h.devDir(), c.Name)); err != nil {
		return nil, fmt.Errorf("nvmeof: controller %s: %w", c.Name, err)
	}
	dir := filepath.Join(h.sysClass(), c.Name)
	interval := 2 * time.Millisecond
	var names []string
	for {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("nvmeof: controller %s: %w", c.Name, err)
		}
		var list []string
		for _, e := range entries {
			list = append(list, e.Name())
		}
		if names = NamespaceDevices(list); len(names) >= want {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("nvmeof: controller %s: %d of %d namespaces after %v: %w",
				c.Name, len(names), want, time.Since(start).Round(time.Millisecond), ctx.Err())
		case <-time.After(interval):
		}
		interval = min(interval*2, 100*time.Millisecond)
	}
	var devs []string
	for _, n := range names {
		p := filepath.Join(h.devDir(), n)
		if _, err := earlyfs.WaitPath(ctx, p); err != nil {
			return nil, fmt.Errorf("nvmeof: controller %s: %w", c.Name, err)
		}
		devs = append(devs, p)
	}
	h.log().Info("nvmeof: namespaces ready", "controller", c.Name, "devices", devs, "duration", time.Since(start).Round(time.Microsecond))
	return devs, nil
}

var (
	nsDirectRE = regexp.MustCompile(`^nvme([0-9]+)n([0-9]+)$`)          // no multipath: nvme<ctrl>n<ns>
	nsPathRE   = regexp.MustCompile(`^nvme([0-9]+)c([0-9]+)n([0-9]+)$`) // multipath path: nvme<subsys>c<ctrl>n<ns>
)

// NamespaceDevices maps the entries of a controller's sysfs directory to
// the namespaces' block device names, sorted: "nvme1n1" stays itself, a
// multipath path device "nvme0c1n1" becomes its head "nvme0n1". Other
// entries are ignored.
func NamespaceDevices(entries []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, e := range entries {
		var name string
		if m := nsPathRE.FindStringSubmatch(e); m != nil {
			name = "nvme" + m[1] + "n" + m[3]
		} else if nsDirectRE.MatchString(e) {
			name = e
		} else {
			continue
		}
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := nsDirectRE.FindStringSubmatch(out[i]), nsDirectRE.FindStringSubmatch(out[j])
		ai, _ := strconv.Atoi(a[1])
		bi, _ := strconv.Atoi(b[1])
		if ai != bi {
			return ai < bi
		}
		an, _ := strconv.Atoi(a[2])
		bn, _ := strconv.Atoi(b[2])
		return an < bn
	})
	return out
}
