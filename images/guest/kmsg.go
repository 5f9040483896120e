package guest

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// KernelLog reads the kernel's log (/dev/kmsg) from the first record
// still buffered on, so a test program can show the host what its kernel
// said.
type KernelLog struct {
	fd int
}

// OpenKernelLog opens the kernel log for reading.
func OpenKernelLog() (*KernelLog, error) {
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/kmsg: %w", err)
	}
	return &KernelLog{fd: fd}, nil
}

// maxRecords bounds one Echo.
const maxRecords = 100000

// Echo reports on g's console, as "label: message", each record not read
// yet whose message mentions one of words. It returns once no record is
// pending.
func (k *KernelLog) Echo(g *Guest, label string, words ...string) {
	buf := make([]byte, 8192)
	for range maxRecords {
		n, err := unix.Read(k.fd, buf)
		if err != nil || n <= 0 {
			return
		}
		msg := kmsgMessage(string(buf[:n]))
		for _, w := range words {
			if strings.Contains(msg, w) {
				g.Reportf("%s: %s", label, msg)
				break
			}
		}
	}
}

// kmsgMessage returns the message of one /dev/kmsg record
// ("prio,seq,usec,flags;message\n continuation lines"): its first line.
func kmsgMessage(rec string) string {
	_, msg, ok := strings.Cut(rec, ";")
	if !ok {
		return ""
	}
	first, _, _ := strings.Cut(msg, "\n")
	return strings.TrimSpace(first)
}
