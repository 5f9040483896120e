package guest

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// AlignedBuffer returns n bytes of page-aligned memory (outside the Go
// heap) for O_DIRECT transfers, and the function that releases it.
func AlignedBuffer(n int) ([]byte, func(), error) {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return nil, nil, fmt.Errorf("aligned buffer of %d bytes: %w", n, err)
	}
	return b, func() { _ = unix.Munmap(b) }, nil
}

// DirectWrite writes data at byte offset off of dev with O_DIRECT (the
// page cache cannot hide what the device does) and syncs it. off and
// len(data) must suit the device's logical block size.
func DirectWrite(dev string, off int64, data []byte) error {
	fd, err := unix.Open(dev, unix.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	b, free, err := AlignedBuffer(len(data))
	if err != nil {
		return err
	}
	defer free()
	copy(b, data)
	if _, err := unix.Pwrite(fd, b, off); err != nil {
		return fmt.Errorf("write %s: %w", dev, err)
	}
	return unix.Fsync(fd)
}

// DirectRead reads n bytes at byte offset off of dev with O_DIRECT.
func DirectRead(dev string, off int64, n int) ([]byte, error) {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	b, free, err := AlignedBuffer(n)
	if err != nil {
		return nil, err
	}
	defer free()
	if _, err := unix.Pread(fd, b, off); err != nil {
		return nil, fmt.Errorf("read %s: %w", dev, err)
	}
	return append([]byte(nil), b...), nil
}
