package nvmetcp

import (
	"errors"

	"github.com/sedboot/sedboot/internal/blockdev"
)

// io executes an NVM command set I/O command.
func (c *controller) io(e *exec) (completion, []byte) {
	cmd := e.c
	s := c.sub
	if s.discovery {
		return fail(scInvalidOpcode), nil
	}
	dev := s.dev
	op := cmd.opcode()
	switch op {
	case ioFlush:
		if n := cmd.nsid(); n != 1 && n != nsidBroadcast {
			return fail(scInvalidNS), nil
		}
		if err := dev.Flush(); err != nil {
			c.t.log.Error("nvmetcp: flush failed", "nqn", s.nqn, "err", err)
			return completion{status: deviceStatus(err, true)}, nil
		}
		return ok(0), nil
	case ioRead, ioWrite, ioWriteZeroes:
	default:
		return fail(scInvalidOpcode), nil
	}
	if cmd.nsid() != 1 {
		return fail(scInvalidNS), nil
	}
	slba := uint64(cmd.cdw(11))<<32 | uint64(cmd.cdw(10))
	nlb := uint64(cmd.cdw(12)&0xFFFF) + 1
	blocks := dev.NumBlocks()
	if slba >= blocks || nlb > blocks-slba {
		return fail(scLBARange), nil
	}
	bs := uint64(dev.BlockSize())
	n := nlb * bs
	switch op {
	case ioRead:
		if n > uint64(c.t.opts.MaxTransfer) {
			return fail(scInvalidField), nil
		}
		if cmd.sglType() != sglTransportA {
			return fail(scSGLInvalidType), nil
		}
		if uint64(cmd.sglLen()) < n {
			return fail(scSGLInvalidData), nil
		}
		buf := e.w.buffer(int(n))
		if err := dev.ReadBlocks(slba, buf); err != nil {
			return c.ioFailed("read", slba, err, false), nil
		}
		s.stats.readCmds.Add(1)
		s.stats.unitsRead.Add(n / 512)
		return ok(0), buf
	case ioWrite:
		if n > uint64(c.t.opts.MaxTransfer) {
			return fail(scInvalidField), nil
		}
		data, st := e.hostData(int(n))
		if st != scSuccess {
			return completion{status: st}, nil
		}
		if err := dev.WriteBlocks(slba, data); err != nil {
			return c.ioFailed("write", slba, err, true), nil
		}
		s.stats.writeCmds.Add(1)
		s.stats.unitsWritten.Add(n / 512)
		return c.afterWrite(), nil
	default: // Write Zeroes: no data moves, MDTS does not apply.
		chunk := uint64(c.t.opts.MaxTransfer) / bs * bs
		zero := e.w.buffer(int(min(chunk, n)))
		clear(zero)
		for done := uint64(0); done < n; {
			l := min(chunk, n-done)
			if err := dev.WriteBlocks(slba+done/bs, zero[:l]); err != nil {
				return c.ioFailed("write zeroes", slba+done/bs, err, true), nil
			}
			done += l
		}
		s.stats.writeCmds.Add(1)
		return c.afterWrite(), nil
	}
}

// afterWrite makes a write durable when the host disabled the write cache.
func (c *controller) afterWrite() completion {
	c.mu.Lock()
	vwc := c.vwc
	c.mu.Unlock()
	if !vwc {
		if err := c.sub.dev.Flush(); err != nil {
			return completion{status: deviceStatus(err, true)}
		}
	}
	return ok(0)
}

func (c *controller) ioFailed(what string, lba uint64, err error, write bool) completion {
	if !errors.Is(err, blockdev.ErrLocked) && !errors.Is(err, blockdev.ErrOutOfRange) {
		c.sub.stats.mediaErrors.Add(1)
		c.t.log.Error("nvmetcp: "+what+" failed", "nqn", c.sub.nqn, "lba", lba, "err", err)
	}
	return completion{status: deviceStatus(err, write)}
}
