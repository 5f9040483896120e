package nvmeof

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"
)

// Discovery log page layout (NVMe base specification, Get Log Page 70h).
const (
	logIDDiscovery = 0x70
	discHeaderSize = 1024
	discEntrySize  = 1024
	maxDiscRecords = 1024 // sanity bound on NUMREC
	offTrSvcID     = 32
	lenTrSvcID     = 32
	offSubNQN      = 256
	lenSubNQN      = 256
	offTrAddr      = 512
	lenTrAddr      = 256
	offTSAS        = 768
)

// LogEntry is one discovery log page entry: a subsystem (or another
// discovery controller) reachable through a port.
type LogEntry struct {
	TransportType uint8  `json:"trtype"`  // 1 RDMA, 2 FC, 3 TCP, 254 loop
	AddressFamily uint8  `json:"adrfam"`  // 1 IPv4, 2 IPv6, 3 IB, 4 FC
	SubsystemType uint8  `json:"subtype"` // 1 referral, 2 NVM, 3 current discovery
	TREQ          uint8  `json:"treq"`
	PortID        uint16 `json:"portid"`
	CntlID        uint16 `json:"cntlid"`
	ASQSZ         uint16 `json:"asqsz"`
	EFlags        uint16 `json:"eflags"`
	TrSvcID       string `json:"trsvcid"`
	SubNQN        string `json:"subnqn"`
	TrAddr        string `json:"traddr"`
	// TCPSecType is the TCP transport's security type (0 none, 1 TLS 1.2,
	// 2 TLS 1.3); zero for other transports.
	TCPSecType uint8 `json:"sectype,omitempty"`
}

// Transport names the entry's transport as the kernel's option string
// spells it ("tcp", "rdma", "fc", "loop").
func (e LogEntry) Transport() string {
	switch e.TransportType {
	case 1:
		return "rdma"
	case 2:
		return "fc"
	case 3:
		return "tcp"
	case 254:
		return "loop"
	}
	return "unknown(" + strconv.Itoa(int(e.TransportType)) + ")"
}

// IsNVMSubsystem reports whether the entry is an NVM subsystem (as
// opposed to a referral to another discovery controller).
func (e LogEntry) IsNVMSubsystem() bool { return e.SubsystemType == 2 }

// Target turns the entry into a connectable target, keeping host identity
// and timeouts from base.
func (e LogEntry) Target(base Target) (Target, error) {
	t := base
	t.Transport = e.Transport()
	t.Address = e.TrAddr
	t.NQN = e.SubNQN
	p, err := strconv.Atoi(e.TrSvcID)
	if err != nil || p <= 0 || p > 65535 {
		return Target{}, fmt.Errorf("nvmeof: discovery entry for %s: service id %q is not a port", e.SubNQN, e.TrSvcID)
	}
	t.Port = p
	return t, t.Validate()
}

// discHeader returns the generation counter and record count of a
// discovery log page header.
func discHeader(b []byte) (genctr, numrec uint64, err error) {
	if len(b) < 16 {
		return 0, 0, fmt.Errorf("nvmeof: discovery log header is %d bytes, want at least 16", len(b))
	}
	return binary.LittleEndian.Uint64(b[0:8]), binary.LittleEndian.Uint64(b[8:16]), nil
}

// ParseDiscoveryLog parses a whole discovery log page (header and
// entries) and returns its generation counter and entries. The page must
// hold every entry its header counts.
func ParseDiscoveryLog(b []byte) (uint64, []LogEntry, error) {
	if len(b) < discHeaderSize {
		return 0, nil, fmt.Errorf("nvmeof: discovery log is %d bytes, shorter than its %d-byte header", len(b), discHeaderSize)
	}
	genctr, numrec, _ := discHeader(b)
	if numrec > maxDiscRecords {
		return genctr, nil, fmt.Errorf("nvmeof: discovery log claims %d records (more than %d)", numrec, maxDiscRecords)
	}
	need := discHeaderSize + int(numrec)*discEntrySize
	if len(b) < need {
		return genctr, nil, fmt.Errorf("nvmeof: discovery log has %d records but only %d bytes (want %d)", numrec, len(b), need)
	}
	entries := make([]LogEntry, 0, numrec)
	for i := range int(numrec) {
		e := b[discHeaderSize+i*discEntrySize : discHeaderSize+(i+1)*discEntrySize]
		le := LogEntry{
			TransportType: e[0],
			AddressFamily: e[1],
			SubsystemType: e[2],
			TREQ:          e[3],
			PortID:        binary.LittleEndian.Uint16(e[4:6]),
			CntlID:        binary.LittleEndian.Uint16(e[6:8]),
			ASQSZ:         binary.LittleEndian.Uint16(e[8:10]),
			EFlags:        binary.LittleEndian.Uint16(e[10:12]),
			TrSvcID:       fixedString(e[offTrSvcID : offTrSvcID+lenTrSvcID]),
			SubNQN:        fixedString(e[offSubNQN : offSubNQN+lenSubNQN]),
			TrAddr:        fixedString(e[offTrAddr : offTrAddr+lenTrAddr]),
		}
		if le.TransportType == 3 {
			le.TCPSecType = e[offTSAS]
		}
		entries = append(entries, le)
	}
	return genctr, entries, nil
}

// fixedString decodes a fixed-size ASCII field: up to the first NUL, with
// the trailing space padding removed.
func fixedString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(bytes.TrimRight(b, " "))
}
