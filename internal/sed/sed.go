// Package sed is sedboot's host side of TCG Opal self-encrypting drives:
// it finds drives (NVMe, SCSI/SAS, SATA), reads their Level 0 discovery and
// runs the operations the boot agent and sedctl need — take ownership,
// activate the Locking SP, set and rotate credentials, configure the global
// range to lock on power cycle, unlock and lock, read and write the
// DataStore table, read C_PIN tries, and revert with SID or PSID.
//
// It speaks Opal through github.com/open-source-firmware/go-tcg-storage
// v0.8.21 and keeps that library's layering: drive transports (package
// transport here) under core sessions and method calls, with sed in the
// place of its locking package, which it does not use (see below).
//
// Lockout safety. Opal lets only authenticated administrators read C_PIN
// Tries, so a host cannot learn the tries left before presenting a key.
// sed therefore
//   - keeps a key verifier in the DataStore of every drive it provisions
//     (see Verifier) and refuses, without presenting it, a key that does not
//     match the verifier;
//   - allows at most one failed presentation per authority per Drive value
//     (per boot, for the agent) until ResetGuard is called;
//   - reads Tries and TryLimit in every authenticated session and refuses to
//     present a different credential to an authority when the tries left
//     could be exhausted (one or fewer left);
//   - reports the tries it read in its results.
//
// Traps in go-tcg-storage v0.8.21 this package works around:
// locking.Initialize(WithAuth) authenticates as SID whatever authority is
// meant, and locking.NewSession leaves the session open when authentication
// fails, so sessions are built here from core.ControlSession.NewSession and
// closed on every path; stream.Bytes panics on byte strings of 2048 bytes or
// more, so DataStore transfers are chunked; the library's session-number
// generator is a shared math/rand.Rand that is unsafe for concurrent use, so
// every session gets a host session number from crypto/rand; response
// decoding can panic on a malformed response, so every library call runs
// under a recover that turns a panic into an error; take-ownership, PIN
// changes, Revert, LockOnReset and DataStore access have no helpers and are
// built from core.MethodCall and table.NewSetCall; an ACE's BooleanExpr
// (a name that is a byte string) cannot be expressed with core.MethodCall,
// so that one call is encoded with the library's stream token encoders and
// sent through core.NewPlainCommunication.
//
// Keys are []byte the caller owns and zeroes. sed never logs them or puts
// them into errors; copies it makes itself are zeroed after use. The
// library's own encoding buffers hold a copy until they are garbage
// collected.
package sed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"

	"github.com/open-source-firmware/go-tcg-storage/pkg/core"
	"github.com/sedboot/sedboot/internal/sed/transport"
)

// Errors callers can test with errors.Is. Errors returned by Drive
// methods name the operation and the drive.
var (
	// ErrNotOpal reports a drive without an Opal-family SSC and Locking SP.
	ErrNotOpal = errors.New("drive does not support TCG Opal locking")
	// ErrWrongCredential reports a credential the drive rejected; it cost
	// one of the authority's tries.
	ErrWrongCredential = errors.New("credential rejected by the drive")
	// ErrLockedOut reports an authority that has reached its TryLimit; it
	// accepts no credential until the drive is power cycled.
	ErrLockedOut = errors.New("authority locked out until the drive is power cycled")
	// ErrVerifierMismatch reports a key that does not match the drive's
	// key verifier; the key was not presented to the drive.
	ErrVerifierMismatch = errors.New("key does not match the drive's key verifier (not presented)")
	// ErrNoVerifier reports that no key verifier was available where one
	// was required.
	ErrNoVerifier = errors.New("no key verifier available")
	// ErrGenerationMismatch reports a key that matches the drive's key
	// verifier under another generation than the one expected
	// (ExpectGeneration); the key was not presented to the drive.
	ErrGenerationMismatch = errors.New("key matches the drive's key verifier under another generation (not presented)")
	// ErrGuard reports a presentation refused because a credential already
	// failed on this authority since the guard was last reset.
	ErrGuard = errors.New("refused: a credential already failed on this authority in this boot")
	// ErrTriesLow reports a presentation refused because it could exhaust
	// the authority's tries (see TriesError).
	ErrTriesLow = errors.New("refused: presenting could exhaust the authority's tries")
	// ErrNotAuthorized reports a method the drive refused for the
	// session's authorities.
	ErrNotAuthorized = errors.New("not authorized by the drive")
	// ErrOutOfRange reports a DataStore access beyond the table's end.
	ErrOutOfRange = errors.New("beyond the end of the DataStore table")
	// ErrBadCredential reports a credential that cannot be an Opal PIN.
	ErrBadCredential = errors.New("invalid credential")
	// ErrMalformedResponse reports a response the host library could not
	// decode.
	ErrMalformedResponse = errors.New("malformed response from the drive")
)

// MaxCredentialLen is the longest PIN Opal's C_PIN table holds (the
// "password" type is max_bytes_32).
const MaxCredentialLen = 32

// Drive is one self-encrypting drive. Its methods are safe for concurrent
// use and run one at a time; different Drives run in parallel.
type Drive struct {
	intf core.DriveIntf
	// com carries the drive's TCG traffic (intf behind an exchange
	// tracker); intf itself serves identity and type checks.
	com    *exchangeTracker
	name   string
	log    *slog.Logger
	closer io.Closer

	mu    sync.Mutex
	guard guard
	// offDrive is a key verifier kept off the drive (UseVerifier).
	offDrive *Verifier

	serialMu sync.Mutex
	serial   string // cached once read
}

// Option configures a Drive.
type Option func(*Drive)

// WithLogger sends the Drive's progress messages to l (default: discard).
// Credentials never reach the log.
func WithLogger(l *slog.Logger) Option {
	return func(d *Drive) {
		if l != nil {
			d.log = l
		}
	}
}

// New wraps intf (a go-tcg-storage drive interface: a real drive from
// Open or transport.Open, or a simulated one) as a Drive named name in
// messages and errors. The caller keeps ownership of intf.
func New(intf core.DriveIntf, name string, opts ...Option) *Drive {
	d := &Drive{
		intf: intf,
		com:  newExchangeTracker(intf),
		name: name,
		log:  slog.New(slog.DiscardHandler),
	}
	d.guard.init()
	for _, o := range opts {
		o(d)
	}
	d.log = d.log.With("drive", name)
	return d
}

// Open opens the drive at path (e.g. /dev/nvme0, /dev/sda). Close
// releases it.
func Open(path string, opts ...Option) (*Drive, error) {
	dev, err := transport.Open(path)
	if err != nil {
		return nil, err
	}
	d := New(dev, path, opts...)
	d.closer = dev
	return d, nil
}

// Name is the drive's name in messages.
func (d *Drive) Name() string { return d.name }

// Close releases a drive opened with Open; for a Drive from New it does
// nothing.
func (d *Drive) Close() error {
	if d.closer == nil {
		return nil
	}
	return d.closer.Close()
}

// Serial returns the drive's serial number as the drive reports it
// (trimmed), or an error when the drive interface cannot report one.
func (d *Drive) Serial() (string, error) {
	d.serialMu.Lock()
	defer d.serialMu.Unlock()
	if d.serial != "" {
		return d.serial, nil
	}
	sn, ok := d.intf.(interface{ SerialNumber() ([]byte, error) })
	if !ok {
		return "", fmt.Errorf("serial number of %s: the drive interface does not report one", d.name)
	}
	var raw []byte
	err := safe(func() error {
		var err error
		raw, err = sn.SerialNumber()
		return err
	})
	if err != nil {
		return "", fmt.Errorf("serial number of %s: %w", d.name, err)
	}
	s := strings.TrimSpace(strings.TrimRight(string(raw), "\x00"))
	if s == "" {
		return "", fmt.Errorf("serial number of %s: the drive reports an empty serial number", d.name)
	}
	d.serial = s
	return s, nil
}

// opError names the operation and the drive in err.
func (d *Drive) opError(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s %s: %w", op, d.name, err)
}

// checkCredential rejects credentials that cannot be an Opal PIN.
func checkCredential(what string, c []byte) error {
	if len(c) == 0 {
		return fmt.Errorf("%w: %s is empty", ErrBadCredential, what)
	}
	if len(c) > MaxCredentialLen {
		return fmt.Errorf("%w: %s is %d bytes, Opal PINs hold at most %d", ErrBadCredential, what, len(c), MaxCredentialLen)
	}
	return nil
}

// safe runs f, turning a panic inside the host library (which indexes
// drive responses without bounds checks) into ErrMalformedResponse.
func safe(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", ErrMalformedResponse, r)
		}
	}()
	return f()
}

// zero overwrites b.
func zero(b []byte) {
	clear(b)
}

// run serialises an operation on the drive and checks ctx first.
func (d *Drive) run(ctx context.Context, op string, f func() error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return d.opError(op, err)
	}
	d.log.Debug("start", "op", op)
	err := f()
	if err != nil {
		d.log.Debug("failed", "op", op, "err", err)
	} else {
		d.log.Debug("done", "op", op)
	}
	return d.opError(op, err)
}
