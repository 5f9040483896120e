package rig

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/sedboot/sedboot/images/qemu"
)

// RealOS is the real OS's init package (see images/realos).
const RealOS = "github.com/sedboot/sedboot/images/realos"

// RootFS is a real OS's root file system image.
type RootFS struct {
	Path  string
	UUID  string
	Label string
}

// BuildRootFS builds the real OS (static) and makes an ext4 image of it in
// dir, with a new random UUID and the given label. srcDir is a directory
// inside the sedboot module (for go build).
func BuildRootFS(ctx context.Context, srcDir, dir, label string) (*RootFS, error) {
	tree, err := os.MkdirTemp(dir, "rootfs-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tree)
	for _, d := range []string{"sbin", "proc", "sys", "dev", "run", "tmp", "var/lib/realos"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			return nil, err
		}
	}
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(tree, "sbin", "init"), RealOS)
	build.Dir = srcDir
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build real OS: %w: %s", err, out)
	}
	var u [16]byte
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	uuid := fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
	img := filepath.Join(dir, "realos-root.ext4")
	os.Remove(img)
	mkfs := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", label, "-U", uuid, "-d", tree,
		"-O", "^has_journal", "-E", "root_owner=0:0", img, "8M")
	if out, err := mkfs.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mkfs.ext4 (e2fsprogs; scripts/prereqs.sh installs it): %w: %s", err, out)
	}
	return &RootFS{Path: img, UUID: uuid, Label: label}, nil
}

// GuestOptions shape a guest's QEMU configuration.
type GuestOptions struct {
	Name string
	// Kernel and Initrd boot the guest.
	Kernel, Initrd string
	// Medium is the boot-medium image (an emulated NVMe drive).
	Medium string
	// KMIP forwards: guest address (GuestHost or GuestHost2) -> host
	// address, on KMIPPort.
	KMIP map[string]string
	// Cmdline adds kernel parameters.
	Cmdline []string
	// Timeout is the guest's hard limit (default 4 minutes).
	Timeout time.Duration
	// Dir keeps the guest's files (default: a temporary directory).
	Dir string
}

// Guest returns the QEMU configuration for a controller booting against
// the rig: the boot medium as an emulated NVMe drive, the NVMe/TCP target
// and key servers behind forwards.
func (r *Rig) Guest(o GuestOptions) qemu.Config {
	fw := []qemu.Forward{{GuestAddr: GuestHost, GuestPort: NVMePort, Host: r.Addr}}
	for ga, host := range o.KMIP {
		fw = append(fw, qemu.Forward{GuestAddr: ga, GuestPort: KMIPPort, Host: host})
	}
	timeout := o.Timeout
	if timeout == 0 {
		timeout = 4 * time.Minute
	}
	return qemu.Config{
		Name:    o.Name,
		Kernel:  o.Kernel,
		Initrd:  o.Initrd,
		Cmdline: append([]string{"quiet", "loglevel=3"}, o.Cmdline...),
		Net:     &qemu.UserNet{Forwards: fw},
		Drives:  []qemu.Drive{{Path: o.Medium, Interface: "nvme", Serial: "SEDBOOTMEDIUM"}},
		Timeout: timeout,
		Dir:     o.Dir,
	}
}

// Refusing returns a 127.0.0.1 address where nothing listens (a port just
// freed), so connections to it are refused.
func Refusing() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// Silent is a listener on 127.0.0.1 that accepts connections and never
// answers: a hung key server.
type Silent struct {
	Addr string
	l    net.Listener
	mu   sync.Mutex
	cs   []net.Conn
	done chan struct{}
}

// NewSilent starts a silent listener.
func NewSilent() (*Silent, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Silent{Addr: l.Addr().String(), l: l, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.cs = append(s.cs, c)
			s.mu.Unlock()
			go io.Copy(io.Discard, c)
		}
	}()
	return s, nil
}

// Accepted returns how many connections were accepted.
func (s *Silent) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.cs)
}

// Close stops it and closes its connections.
func (s *Silent) Close() {
	s.l.Close()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.cs {
		c.Close()
	}
}
