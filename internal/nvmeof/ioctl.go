package nvmeof

import (
	"context"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// passthruCmd is struct nvme_passthru_cmd of <linux/nvme_ioctl.h>
// (72 bytes).
type passthruCmd struct {
	Opcode      uint8
	Flags       uint8
	Rsvd1       uint16
	NSID        uint32
	Cdw2        uint32
	Cdw3        uint32
	Metadata    uint64
	Addr        uint64
	MetadataLen uint32
	DataLen     uint32
	Cdw10       uint32
	Cdw11       uint32
	Cdw12       uint32
	Cdw13       uint32
	Cdw14       uint32
	Cdw15       uint32
	TimeoutMs   uint32
	Result      uint32
}

const (
	// nvmeIoctlAdminCmd is NVME_IOCTL_ADMIN_CMD, _IOWR('N', 0x41, struct
	// nvme_admin_cmd).
	nvmeIoctlAdminCmd = 0xC0484E41
	opGetLogPage      = 0x02
	// logChunk is the largest transfer per Get Log Page command; small
	// enough for any controller's MDTS.
	logChunk = 4096
	// adminTimeoutMs bounds each admin command in the kernel.
	adminTimeoutMs = 10000
)

// getLogPageCmd builds a Get Log Page command for log lid, reading n bytes
// (a multiple of 4) at byte offset off into the buffer at addr.
func getLogPageCmd(lid uint8, off uint64, n uint32, addr uintptr) passthruCmd {
	numd := n/4 - 1 // 0-based number of dwords
	return passthruCmd{
		Opcode:    opGetLogPage,
		NSID:      0,
		Addr:      uint64(addr),
		DataLen:   n,
		Cdw10:     uint32(lid) | (numd&0xffff)<<16,
		Cdw11:     numd >> 16,
		Cdw12:     uint32(off),
		Cdw13:     uint32(off >> 32),
		TimeoutMs: adminTimeoutMs,
	}
}

// getLog reads n bytes of log page lid from the controller open as fd,
// in chunks, checking ctx between them.
func getLog(ctx context.Context, fd int, lid uint8, n int) ([]byte, error) {
	if n <= 0 || n%4 != 0 {
		return nil, fmt.Errorf("get log page %#x: length %d is not a positive multiple of 4", lid, n)
	}
	buf := make([]byte, n)
	for off := 0; off < n; off += logChunk {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("get log page %#x: %w", lid, err)
		}
		size := min(logChunk, n-off)
		cmd := getLogPageCmd(lid, uint64(off), uint32(size), uintptr(unsafe.Pointer(&buf[off])))
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), nvmeIoctlAdminCmd, uintptr(unsafe.Pointer(&cmd)))
		runtime.KeepAlive(buf)
		if errno != 0 {
			return nil, fmt.Errorf("get log page %#x at offset %d: %w", lid, off, errno)
		}
		if r != 0 {
			return nil, fmt.Errorf("get log page %#x at offset %d: NVMe status %#x", lid, off, r)
		}
	}
	return buf, nil
}
