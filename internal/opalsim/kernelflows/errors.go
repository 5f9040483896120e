package kernelflows

import (
	"errors"
	"fmt"
	"syscall"
)

// Opal method status codes (TCG Core 5.1.5) as the kernel returns them.
const (
	StatusSuccess             = 0x00
	StatusNotAuthorized       = 0x01
	StatusSPBusy              = 0x03
	StatusSPFailed            = 0x04
	StatusSPDisabled          = 0x05
	StatusSPFrozen            = 0x06
	StatusNoSessionsAvailable = 0x07
	StatusUniquenessConflict  = 0x08
	StatusInsufficientSpace   = 0x09
	StatusInsufficientRows    = 0x0a
	StatusInvalidFunction     = 0x0b
	StatusInvalidParameter    = 0x0c
	StatusInvalidReference    = 0x0d
	StatusTPerMalfunction     = 0x0f
	StatusTransactionFailure  = 0x10
	StatusResponseOverflow    = 0x11
	StatusAuthorityLockedOut  = 0x12
	StatusFail                = 0x3f
	// StatusNoMethodStatus is DTAERROR_NO_METHOD_STATUS: the kernel found
	// no status list at the end of the response.
	StatusNoMethodStatus = 0x89
)

var statusNames = [...]string{
	"Success",
	"Not Authorized",
	"Unknown Error",
	"SP Busy",
	"SP Failed",
	"SP Disabled",
	"SP Frozen",
	"No Sessions Available",
	"Uniqueness Conflict",
	"Insufficient Space",
	"Insufficient Rows",
	"Invalid Function",
	"Invalid Parameter",
	"Invalid Reference",
	"Unknown Error",
	"TPER Malfunction",
	"Transaction Failure",
	"Response Overflow",
	"Authority Locked Out",
}

// StatusName returns the kernel's name for an Opal method status
// (opal_error_to_human).
func StatusName(status uint8) string {
	switch {
	case status == StatusFail:
		return "Failed"
	case status == StatusNoMethodStatus:
		return "No Method Status"
	case int(status) < len(statusNames):
		return statusNames[status]
	}
	return "Unknown Error"
}

// StatusError is a non-zero Opal method status; the kernel returns it to
// user space as a positive ioctl result.
type StatusError struct {
	// Step names the kernel step that received the status.
	Step string
	// Status is the method status byte.
	Status uint8
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s: opal status 0x%02x (%s)", e.Step, e.Status, StatusName(e.Status))
}

// IsStatus reports whether err carries the Opal method status want.
func IsStatus(err error, want uint8) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Status == want
}

// TransportError reports a failed SecuritySend or SecurityRecv.
type TransportError struct {
	Op  string
	Err error
}

func (e *TransportError) Error() string { return e.Op + ": " + e.Err.Error() }

// Unwrap returns the device's error.
func (e *TransportError) Unwrap() error { return e.Err }

// Code returns the integer the kernel's sed_ioctl would return for the
// outcome err: 0 for nil, the Opal status for a *StatusError, the negated
// errno for an error wrapping a syscall.Errno, and -EIO for a transport
// failure or anything else.
func Code(err error) int {
	if err == nil {
		return 0
	}
	var se *StatusError
	if errors.As(err, &se) {
		return int(se.Status)
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		return -int(en)
	}
	return -int(syscall.EIO)
}

// errnoError wraps a kernel errno with the step that produced it.
func errnoError(step string, en syscall.Errno) error {
	return fmt.Errorf("%s: %w", step, en)
}

// statusOrNil turns a kernel-style positive status into an error.
func statusOrNil(step string, status uint8) error {
	if status == StatusSuccess {
		return nil
	}
	return &StatusError{Step: step, Status: status}
}
