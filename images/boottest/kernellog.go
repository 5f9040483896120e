package boottest

import (
	"regexp"
	"strings"

	"github.com/sedboot/sedboot/images/guest"
)

// KernelRecord is one kernel log message a guest program echoed on its
// console (guest.KernelLog.Echo) under Label.
type KernelRecord struct {
	Label string
	Msg   string
}

// EchoedKernelLog returns, in order, the kernel log messages echoed on
// console under labels that start with "kmsg" ("kmsg", "kmsg-after").
func EchoedKernelLog(console string) []KernelRecord {
	var out []KernelRecord
	for _, line := range strings.Split(console, "\n") {
		i := strings.Index(line, guest.Marker+" kmsg")
		if i < 0 {
			continue
		}
		label, msg, ok := strings.Cut(strings.TrimPrefix(line[i:], guest.Marker+" "), ":")
		if !ok {
			continue
		}
		out = append(out, KernelRecord{Label: label, Msg: strings.TrimSpace(msg)})
	}
	return out
}

// What the guest kernel's NVMe/TCP host says, for the tests that judge it.
var (
	// NVMeTrouble matches messages that mean the target broke the
	// protocol or the host gave up on it.
	NVMeTrouble = regexp.MustCompile(`(?i)(digest|invalid|unexpected|mismatch|not supported|unsupported|failed to|could not|timeout|reset|error recovery|rejecting|bogus|duplicate|mandatory)`)
	// NVMeReconnect matches what the host rightly says when a power
	// cycle ends its associations and it reconnects.
	NVMeReconnect = regexp.MustCompile(`(?i)(starting error recovery|reconnect|Reconnecting|failed to connect socket|receive failed|failed to send|Removing ctrl|queue \d+: timeout|could not set timestamp|Successfully reconnected|Property Set error|reset)`)
)
