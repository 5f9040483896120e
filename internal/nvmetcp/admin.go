package nvmetcp

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"net"
	"strconv"
	"time"

	"github.com/sedboot/sedboot/internal/blockdev"
)

// Identify CNS values.
const (
	cnsNamespace     = 0x00
	cnsController    = 0x01
	cnsActiveNSList  = 0x02
	cnsNSDescList    = 0x03
	cnsCSNamespace   = 0x05
	cnsCSController  = 0x06
	cnsCSActiveNS    = 0x07
	cnsCSIndepNS     = 0x08
	identifyLen      = 4096
	nsidBroadcast    = 0xFFFFFFFF
	controllerIO     = 1
	controllerDisc   = 2
	logError         = 0x01
	logSMART         = 0x02
	logFirmware      = 0x03
	logCmdEffects    = 0x05
	logDiscovery     = 0x70
	discoveryHdrLen  = 1024
	discoveryRecLen  = 1024
	trtypeTCP        = 3
	subtypeNVMe      = 2
	adrfamIPv4       = 1
	adrfamIPv6       = 2
	firmwareSlotInfo = 512
)

// admin executes an admin command on a ready controller.
func (c *controller) adminCmd(e *exec) (completion, []byte) {
	cmd := e.c
	op := cmd.opcode()
	if c.sub.discovery {
		switch op {
		case adminIdentify, adminGetLogPage, adminKeepAlive, adminSetFeatures, adminGetFeatures, adminAsyncEvent, adminAbort:
		default:
			return fail(scInvalidOpcode), nil
		}
	}
	switch op {
	case adminIdentify:
		return c.identify(e)
	case adminGetLogPage:
		return c.getLogPage(e)
	case adminSetFeatures:
		return c.setFeatures(e)
	case adminGetFeatures:
		return c.getFeatures(e)
	case adminKeepAlive:
		return ok(0), nil
	case adminAbort:
		// Commands run to completion quickly; report "not aborted".
		return ok(1), nil
	case adminAsyncEvent:
		if c.addAER(e.w.q, cmd.cid()) {
			// Parked: the response goes out when an event occurs.
			e.parked = true
			return completion{}, nil
		}
		return fail(scAERLimit), nil
	case adminSecuritySend:
		return c.securitySend(e)
	case adminSecurityRecv:
		return c.securityRecv(e)
	}
	return fail(scInvalidOpcode), nil
}

func (c *controller) identify(e *exec) (completion, []byte) {
	cmd := e.c
	cns := uint8(cmd.cdw(10))
	csi := uint8(cmd.cdw(11) >> 24)
	nsid := cmd.nsid()
	b := e.w.buffer(identifyLen)
	clear(b)
	if c.sub.discovery && cns != cnsController {
		return fail(scInvalidField), nil
	}
	switch cns {
	case cnsController:
		c.identifyController(b)
	case cnsNamespace:
		if nsid == nsidBroadcast {
			c.identifyNamespace(b, false)
			break
		}
		if nsid != 1 {
			return fail(scInvalidNS), nil
		}
		c.identifyNamespace(b, true)
	case cnsActiveNSList, cnsCSActiveNS:
		if cns == cnsCSActiveNS && csi != 0 {
			return fail(scInvalidField), nil
		}
		if nsid >= 0xFFFFFFFE {
			return fail(scInvalidField), nil
		}
		if nsid < 1 {
			binary.LittleEndian.PutUint32(b[0:], 1)
		}
	case cnsNSDescList:
		if nsid != 1 {
			return fail(scInvalidNS), nil
		}
		p := b
		put := func(typ byte, id []byte) {
			p[0], p[1] = typ, byte(len(id))
			copy(p[4:], id)
			p = p[4+len(id):]
		}
		put(1, c.sub.eui64[:])
		put(2, c.sub.nguid[:])
		put(4, []byte{0}) // command set: NVM
	case cnsCSNamespace:
		if csi != 0 {
			return fail(scInvalidField), nil
		}
		if nsid != 1 {
			return fail(scInvalidNS), nil
		}
		// NVM command set specific namespace data: no extended LBA formats.
	case cnsCSController:
		if csi != 0 {
			return fail(scInvalidField), nil
		}
		// NVM command set specific controller data: no extra limits.
	case cnsCSIndepNS:
		if nsid != 1 {
			return fail(scInvalidNS), nil
		}
		b[14] = 1 // NSTAT: namespace ready
	default:
		return fail(scInvalidField), nil
	}
	return ok(0), b
}

func (c *controller) identifyController(b []byte) {
	s := c.sub
	o := &c.t.opts
	if s.discovery {
		putString(b[4:24], "sedboot-discovery")
		putString(b[24:64], "sedboot NVMe/TCP discovery controller")
		putString(b[64:72], "1.0")
	} else {
		putString(b[4:24], s.id.Serial)
		putString(b[24:64], s.id.Model)
		putString(b[64:72], s.id.Firmware)
	}
	b[72] = 6                                                    // RAB
	b[77] = uint8(bits.TrailingZeros(uint(o.MaxTransfer >> 12))) // MDTS in 4 KiB pages, log2
	binary.LittleEndian.PutUint16(b[78:], c.id)                  // CNTLID
	binary.LittleEndian.PutUint32(b[80:], nvmeVersion)           // VER
	if s.discovery {
		b[111] = controllerDisc
	} else {
		b[111] = controllerIO
	}
	var oacs uint16
	if s.sec != nil {
		oacs |= 1 // Security Send and Receive
	}
	binary.LittleEndian.PutUint16(b[256:], oacs)
	b[258] = 3                 // ACL: four Aborts at once
	b[259] = aerLimit - 1      // AERL
	b[260] = 0x03              // FRMW: one slot, slot 1 read-only
	b[261] = 0x04              // LPA: extended Get Log Page data (offsets)
	b[262] = errLogEntries - 1 // ELPE
	if !s.discovery {
		binary.LittleEndian.PutUint16(b[266:], 343) // WCTEMP 70 °C
		binary.LittleEndian.PutUint16(b[268:], 358) // CCTEMP 85 °C
		capBytes := s.dev.NumBlocks() * uint64(s.dev.BlockSize())
		binary.LittleEndian.PutUint64(b[280:], capBytes) // TNVMCAP (low 64 bits)
	}
	binary.LittleEndian.PutUint16(b[320:], 1) // KAS: 100 ms granularity
	if !s.discovery {
		b[512] = 0x66 // SQES: 64-byte entries
		b[513] = 0x44 // CQES: 16-byte entries
	}
	binary.LittleEndian.PutUint16(b[514:], uint16(o.QueueDepth)) // MAXCMD
	if !s.discovery {
		binary.LittleEndian.PutUint32(b[516:], 1)    // NN
		binary.LittleEndian.PutUint16(b[520:], 1<<3) // ONCS: Write Zeroes
		b[525] = 0x07                                // VWC present, flush of all namespaces supported
	}
	// SGLS: SGLs supported without alignment; SGL offsets for in-capsule data.
	binary.LittleEndian.PutUint32(b[536:], 1|1<<20)
	copy(b[768:1024], s.nqn)
	binary.LittleEndian.PutUint32(b[1792:], uint32(sqeSize+o.InCapsuleData)/16) // IOCCSZ
	binary.LittleEndian.PutUint32(b[1796:], cqeSize/16)                         // IORCSZ
	// ICDOFF 0, FCATT 0 (dynamic controller model)
	b[1803] = 1                                  // MSDBD
	binary.LittleEndian.PutUint16(b[1804:], 1)   // OFCS: Disconnect supported
	binary.LittleEndian.PutUint16(b[2048:], 900) // PSD0 max power 9 W
}

func (c *controller) identifyNamespace(b []byte, active bool) {
	dev := c.sub.dev
	if active {
		n := dev.NumBlocks()
		binary.LittleEndian.PutUint64(b[0:], n)  // NSZE
		binary.LittleEndian.PutUint64(b[8:], n)  // NCAP
		binary.LittleEndian.PutUint64(b[16:], n) // NUSE
		binary.LittleEndian.PutUint64(b[48:], n*uint64(dev.BlockSize()))
		copy(b[104:120], c.sub.nguid[:])
		copy(b[120:128], c.sub.eui64[:])
	}
	// One LBA format, no metadata.
	b[130] = uint8(bits.TrailingZeros(uint(dev.BlockSize())))
}

func (c *controller) getLogPage(e *exec) (completion, []byte) {
	cmd := e.c
	lid := uint8(cmd.cdw(10))
	numd := (uint64(cmd.cdw(11)&0xFFFF)<<16 | uint64(cmd.cdw(10)>>16)) + 1
	length := numd * 4
	off := uint64(cmd.cdw(13))<<32 | uint64(cmd.cdw(12))
	if off%4 != 0 || length > uint64(c.t.opts.MaxTransfer) {
		return fail(scInvalidField), nil
	}
	var full []byte
	switch {
	case lid == logDiscovery && c.sub.discovery:
		full = c.discoveryLog(e.w.q)
	case c.sub.discovery:
		return fail(scInvalidLogPage), nil
	case lid == logError:
		full = c.errorLog()
	case lid == logSMART:
		full = c.smartLog()
	case lid == logFirmware:
		full = make([]byte, firmwareSlotInfo)
		full[0] = 1 // slot 1 active
		putString(full[8:16], c.sub.id.Firmware)
	case lid == logCmdEffects:
		full = c.effectsLog()
	default:
		return fail(scInvalidLogPage), nil
	}
	out := e.w.buffer(int(length))
	clear(out)
	if off < uint64(len(full)) {
		copy(out, full[off:])
	}
	return ok(0), out
}

func (c *controller) errorLog() []byte {
	b := make([]byte, errLogEntries*64)
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.errLog {
		ent := c.errLog[len(c.errLog)-1-i]
		p := b[i*64:]
		binary.LittleEndian.PutUint64(p[0:], ent.count)
		binary.LittleEndian.PutUint16(p[8:], ent.sqid)
		binary.LittleEndian.PutUint16(p[10:], ent.cid)
		binary.LittleEndian.PutUint16(p[12:], (ent.status&0x7FF)<<1)
		binary.LittleEndian.PutUint16(p[14:], 0xFFFF) // parameter error location: not specific
		binary.LittleEndian.PutUint64(p[16:], ent.lba)
		binary.LittleEndian.PutUint32(p[24:], ent.nsid)
		p[29] = trtypeTCP
	}
	return b
}

func put128(b []byte, v uint64) { binary.LittleEndian.PutUint64(b, v) }

func (c *controller) smartLog() []byte {
	b := make([]byte, 512)
	st := &c.sub.stats
	binary.LittleEndian.PutUint16(b[1:], 308) // composite temperature 35 °C
	b[3] = 100                                // available spare
	b[4] = 10                                 // available spare threshold
	units := func(v uint64) uint64 { return (v + 999) / 1000 }
	put128(b[32:], units(st.unitsRead.Load()))
	put128(b[48:], units(st.unitsWritten.Load()))
	put128(b[64:], st.readCmds.Load())
	put128(b[80:], st.writeCmds.Load())
	put128(b[128:], uint64(time.Since(c.created)/time.Hour))
	put128(b[160:], st.mediaErrors.Load())
	c.mu.Lock()
	put128(b[176:], c.errCount)
	c.mu.Unlock()
	return b
}

func (c *controller) effectsLog() []byte {
	b := make([]byte, 4096)
	const csupp, lbcc = 1, 2
	for _, op := range []uint8{adminGetLogPage, adminIdentify, adminAbort, adminSetFeatures, adminGetFeatures, adminAsyncEvent, adminKeepAlive} {
		binary.LittleEndian.PutUint32(b[4*int(op):], csupp)
	}
	if c.sub.sec != nil {
		binary.LittleEndian.PutUint32(b[4*adminSecuritySend:], csupp|lbcc)
		binary.LittleEndian.PutUint32(b[4*adminSecurityRecv:], csupp)
	}
	for _, op := range []uint8{ioFlush, ioRead} {
		binary.LittleEndian.PutUint32(b[1024+4*int(op):], csupp)
	}
	for _, op := range []uint8{ioWrite, ioWriteZeroes} {
		binary.LittleEndian.PutUint32(b[1024+4*int(op):], csupp|lbcc)
	}
	return b
}

// discoveryLog lists every exported subsystem at the address the host
// reached us on (or Options.AdvertiseAddr).
func (c *controller) discoveryLog(q *queue) []byte {
	t := c.t
	host, port := "", ""
	if t.opts.AdvertiseAddr != "" {
		host, port, _ = net.SplitHostPort(t.opts.AdvertiseAddr)
	} else if ta, isTCP := q.nc.LocalAddr().(*net.TCPAddr); isTCP {
		host, port = ta.IP.String(), strconv.Itoa(ta.Port)
	}
	adrfam := byte(adrfamIPv4)
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		adrfam = adrfamIPv6
	}
	t.mu.Lock()
	genctr := t.genctr
	nqns := make([]string, 0, len(t.order))
	for _, s := range t.order {
		nqns = append(nqns, s.nqn)
	}
	t.mu.Unlock()
	b := make([]byte, discoveryHdrLen+discoveryRecLen*len(nqns))
	binary.LittleEndian.PutUint64(b[0:], genctr)
	binary.LittleEndian.PutUint64(b[8:], uint64(len(nqns)))
	for i, nqn := range nqns {
		r := b[discoveryHdrLen+i*discoveryRecLen:]
		r[0] = trtypeTCP
		r[1] = adrfam
		r[2] = subtypeNVMe
		r[3] = 0x02                                  // TREQ: secure channel not required
		binary.LittleEndian.PutUint16(r[4:], 1)      // PORTID
		binary.LittleEndian.PutUint16(r[6:], 0xFFFF) // CNTLID: dynamic
		binary.LittleEndian.PutUint16(r[8:], 32)     // ASQSZ
		putString(r[32:64], port)
		copy(r[256:512], nqn)
		putString(r[512:768], host)
		// TSAS for TCP: security type 0, none.
	}
	return b
}

func (c *controller) setFeatures(e *exec) (completion, []byte) {
	cmd := e.c
	fid := uint8(cmd.cdw(10))
	if cmd.cdw(10)&(1<<31) != 0 {
		return fail(scFeatureNotSavable), nil
	}
	v := cmd.cdw(11)
	switch fid {
	case featNumQueues:
		if c.sub.discovery {
			return fail(scInvalidField), nil
		}
		nsqr, ncqr := v&0xFFFF, v>>16
		if nsqr == 0xFFFF || ncqr == 0xFFFF {
			return fail(scInvalidField), nil
		}
		n := min(int(max(nsqr, ncqr))+1, c.t.opts.MaxIOQueues)
		c.mu.Lock()
		if len(c.ioqs) > 0 {
			c.mu.Unlock()
			return fail(scCmdSeqError), nil
		}
		c.numIOQ = n
		c.mu.Unlock()
		return ok(uint64(n-1)<<16 | uint64(n-1)), nil
	case featKeepAlive:
		c.setKATO(time.Duration(v) * time.Millisecond)
		return ok(0), nil
	case featAsyncEvent:
		c.mu.Lock()
		c.aec = v
		c.mu.Unlock()
		return ok(0), nil
	case featVWC:
		if c.sub.discovery {
			return fail(scInvalidField), nil
		}
		c.mu.Lock()
		c.vwc = v&1 != 0
		c.mu.Unlock()
		return ok(0), nil
	case featTempThreshold:
		if (v>>16)&0xF == 0 && (v>>20)&3 == 0 {
			c.mu.Lock()
			c.tempThres = uint16(v)
			c.mu.Unlock()
		}
		return ok(0), nil
	case featPowerMgmt:
		if v&0x1F != 0 {
			return fail(scInvalidField), nil
		}
		return ok(0), nil
	}
	return fail(scInvalidField), nil
}

func (c *controller) getFeatures(e *exec) (completion, []byte) {
	cmd := e.c
	fid := uint8(cmd.cdw(10))
	sel := (cmd.cdw(10) >> 8) & 7
	if sel == 3 { // supported capabilities
		switch fid {
		case featNumQueues, featKeepAlive, featAsyncEvent, featVWC, featTempThreshold, featPowerMgmt:
			return ok(1 << 2), nil // changeable
		case featHostID:
			return ok(0), nil
		}
		return fail(scInvalidField), nil
	}
	if sel > 3 {
		return fail(scInvalidField), nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch fid {
	case featNumQueues:
		if c.sub.discovery {
			return fail(scInvalidField), nil
		}
		n := c.t.opts.MaxIOQueues
		if c.numIOQ > 0 && sel == 0 {
			n = c.numIOQ
		}
		return ok(uint64(n-1)<<16 | uint64(n-1)), nil
	case featKeepAlive:
		if sel == 0 {
			return ok(uint64(c.kato / time.Millisecond)), nil
		}
		return ok(0), nil
	case featAsyncEvent:
		if sel == 0 {
			return ok(uint64(c.aec)), nil
		}
		return ok(0), nil
	case featVWC:
		if c.sub.discovery {
			return fail(scInvalidField), nil
		}
		if c.vwc || sel != 0 {
			return ok(1), nil
		}
		return ok(0), nil
	case featTempThreshold:
		if sel == 0 && (cmd.cdw(11)>>16)&0xF == 0 && (cmd.cdw(11)>>20)&3 == 0 {
			return ok(uint64(c.tempThres)), nil
		}
		return ok(343), nil
	case featPowerMgmt:
		return ok(0), nil
	case featHostID:
		if cmd.cdw(11)&1 == 0 {
			return fail(scInvalidField), nil // only the 128-bit host identifier exists
		}
		out := e.w.buffer(16)
		copy(out, c.hostID[:])
		return ok(0), out
	}
	return fail(scInvalidField), nil
}

// securityFields decodes SECP, SPSP and the transfer/allocation length.
func securityFields(cmd *command) (secp uint8, spsp uint16, length uint32) {
	d := cmd.cdw(10)
	return uint8(d >> 24), uint16(d >> 8), cmd.cdw(11)
}

func (c *controller) securitySend(e *exec) (completion, []byte) {
	if c.sub.sec == nil {
		return fail(scInvalidOpcode), nil
	}
	secp, spsp, tl := securityFields(e.c)
	if tl > uint32(c.t.opts.MaxTransfer) {
		return fail(scInvalidField), nil
	}
	data, st := e.hostData(int(tl))
	if st != scSuccess {
		return completion{status: st}, nil
	}
	if err := c.sub.sec.SecuritySend(secp, spsp, data); err != nil {
		return c.securityFailed("security send", secp, spsp, err), nil
	}
	return ok(0), nil
}

func (c *controller) securityRecv(e *exec) (completion, []byte) {
	if c.sub.sec == nil {
		return fail(scInvalidOpcode), nil
	}
	secp, spsp, al := securityFields(e.c)
	if al > uint32(c.t.opts.MaxTransfer) {
		return fail(scInvalidField), nil
	}
	resp, err := c.sub.sec.SecurityRecv(secp, spsp, int(al))
	if err != nil {
		return c.securityFailed("security receive", secp, spsp, err), nil
	}
	// Like a drive, fill the whole allocation; what the protocol did not use is zero.
	out := e.w.buffer(int(al))
	clear(out)
	copy(out, resp)
	return ok(0), out
}

func (c *controller) securityFailed(what string, secp uint8, spsp uint16, err error) completion {
	c.t.log.Warn("nvmetcp: "+what+" failed", "nqn", c.sub.nqn, "secp", secp, "spsp", spsp, "err", err)
	if errors.Is(err, blockdev.ErrLocked) {
		return fail(scAccessDenied)
	}
	return fail(scInvalidField)
}
