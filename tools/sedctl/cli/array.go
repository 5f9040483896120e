package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/lifecycle"
	"github.com/sedboot/sedboot/internal/sed"
)

// arrayFlags are the flags of every command that works on the array.
type arrayFlags struct {
	medium    *string
	adminCert *string
	adminKey  *string
	ca        *string
	json      *bool
}

func addArrayFlags(fs *flag.FlagSet, admin bool) *arrayFlags {
	af := &arrayFlags{medium: mediumFlag(fs)}
	af.json = fs.Bool("json", false, "print the result as JSON (progress still goes to standard error)")
	if admin {
		af.adminCert = fs.String("admin-cert", "", "administrator's client certificate (PEM file; default $SEDBOOT_ADMIN_CERT, else the array's own certificate from the boot medium)")
		af.adminKey = fs.String("admin-key", "", "administrator's client key (PEM file; default $SEDBOOT_ADMIN_KEY)")
		af.ca = fs.String("ca", "", "CA bundle for the key servers (PEM file; default the boot medium's)")
	}
	return af
}

// opened is an array ready for lifecycle operations.
type opened struct {
	a       *lifecycle.Array
	closers []io.Closer
}

func (o *opened) Close() error {
	var errs []error
	for i := len(o.closers) - 1; i >= 0; i-- {
		errs = append(errs, o.closers[i].Close())
	}
	return errors.Join(errs...)
}

// openArray opens the boot medium (locked against a second sedctl when
// exclusive), reads the document, finds the drives and builds the key
// server clients.
func openArray(ctx context.Context, e *env, af *arrayFlags, exclusive bool) (*opened, error) {
	m, c, err := openMedium(e, *af.medium)
	if err != nil {
		return nil, err
	}
	o := &opened{closers: []io.Closer{c}}
	if exclusive {
		if err := lockMedium(c); err != nil {
			o.Close()
			return nil, err
		}
	}
	doc, err := loadDoc(m)
	if err != nil {
		o.Close()
		return nil, err
	}
	drives, closeDrives, err := findDrives(ctx, e)
	if err != nil {
		o.Close()
		return nil, err
	}
	o.closers = append(o.closers, closeDrives)
	a := &lifecycle.Array{Doc: doc, Medium: m, Drives: drives}
	a.Progress = func(ev lifecycle.Event) { fmt.Fprintln(e.stderr, "  "+ev.String()) }
	if doc.KMS != nil {
		if a.Agent, err = lifecycle.AgentClient(doc, nil); err != nil {
			o.Close()
			return nil, err
		}
		a.Admin = a.Agent
		if af.adminCert != nil {
			if a.Admin, err = adminClient(e, af, doc); err != nil {
				o.Close()
				return nil, err
			}
		}
	}
	o.a = a
	return o, nil
}

// adminClient builds the administrator's key-server client from the
// flags (or the environment); without them, the array's own identity.
func adminClient(e *env, af *arrayFlags, doc *config.Document) (*kms.Client, error) {
	cert, key := *af.adminCert, *af.adminKey
	if cert == "" {
		cert = e.getenv("SEDBOOT_ADMIN_CERT")
	}
	if key == "" {
		key = e.getenv("SEDBOOT_ADMIN_KEY")
	}
	if cert == "" && key == "" {
		return lifecycle.AgentClient(doc, nil)
	}
	if cert == "" || key == "" {
		return nil, usageError{"--admin-cert and --admin-key go together"}
	}
	cfg := kms.Config{Servers: lifecycle.Servers(doc), CertFile: cert, KeyFile: key, Version: doc.KMS.Version,
		AttemptTimeout: doc.Deadlines.KeyAttempt.D(kms.DefaultAttemptTimeout)}
	if *af.ca != "" {
		cfg.CAFile = *af.ca
	} else {
		cfg.CAPEM = []byte(doc.KMS.CA)
	}
	c, err := kms.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("administrator identity: %w", err)
	}
	return c, nil
}

// lockMedium takes an exclusive lock on the medium so that two sedctl
// runs do not journal at once.
func lockMedium(c io.Closer) error {
	f, ok := c.(*os.File)
	if !ok {
		return nil
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("another sedctl is working on the boot medium %s: wait for it to finish", f.Name())
		}
		return fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return nil
}

// closerFunc adapts a function to io.Closer.
type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// findDrives returns the machine's self-encrypting drives (Opal with
// locking support), or the test's.
func findDrives(ctx context.Context, e *env) ([]*sed.Drive, io.Closer, error) {
	if e.drives != nil {
		ds, err := e.drives(ctx)
		return ds, closerFunc(func() error { return nil }), err
	}
	all, err := enumerate(ctx)
	if err != nil {
		return nil, nil, err
	}
	var out []*sed.Drive
	for _, d := range all {
		if d.drive != nil && d.sum != nil && d.sum.Opal() {
			out = append(out, d.drive)
		} else if d.drive != nil {
			d.drive.Close()
		}
	}
	return out, closerFunc(func() error {
		for _, d := range out {
			d.Close()
		}
		return nil
	}), nil
}

// found is one drive the machine has.
type found struct {
	cand  sed.Candidate
	drive *sed.Drive
	sum   *sed.Summary
	err   error
}

// enumerate lists the machine's drives and opens each.
func enumerate(ctx context.Context) ([]found, error) {
	cands, err := sed.Enumerate(ctx, "/")
	if err != nil {
		return nil, fmt.Errorf("enumerate drives: %w", err)
	}
	var out []found
	for _, c := range cands {
		f := found{cand: c}
		if f.drive, f.err = sed.Open(c.Path); f.err == nil {
			f.sum, f.err = f.drive.Discover(ctx)
		}
		out = append(out, f)
	}
	return out, nil
}

// printJSON writes v as indented JSON to standard output.
func printJSON(e *env, v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// lines reads answers from standard input, one line at a time.
type lines struct {
	e *env
	r *bufio.Reader
}

func newLines(e *env) *lines { return &lines{e: e, r: bufio.NewReader(e.stdin)} }

func (l *lines) terminal() (*os.File, bool) {
	f, ok := l.e.stdin.(*os.File)
	return f, ok && term.IsTerminal(int(f.Fd()))
}

func (l *lines) line() (string, error) {
	s, err := l.r.ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && s != "") {
		return "", errors.New("no answer on standard input")
	}
	return strings.TrimRight(s, "\r\n"), nil
}

// confirm asks for word to be typed before something that cannot be
// undone; --yes skips it.
func (l *lines) confirm(yes bool, what, word string) error {
	if yes {
		return nil
	}
	fmt.Fprintf(l.e.stderr, "%s\nType %q to continue: ", what, word)
	got, err := l.line()
	if _, tty := l.terminal(); !tty {
		fmt.Fprintln(l.e.stderr) // the answer came without an echo
	}
	if err != nil {
		return fmt.Errorf("not confirmed (%v); nothing was changed (use --yes for automation)", err)
	}
	if strings.TrimSpace(got) != word {
		return fmt.Errorf("not confirmed (typed %q); nothing was changed", got)
	}
	return nil
}

// passphrase reads a passphrase: from file, else from the terminal
// (twice when twice), else one line of standard input.
func (l *lines) passphrase(file string, twice bool) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", err
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	if f, ok := l.terminal(); ok {
		fmt.Fprint(l.e.stderr, "backup passphrase: ")
		a, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(l.e.stderr)
		if err != nil {
			return "", err
		}
		if twice {
			fmt.Fprint(l.e.stderr, "again: ")
			b, err := term.ReadPassword(int(f.Fd()))
			fmt.Fprintln(l.e.stderr)
			if err != nil {
				return "", err
			}
			if string(a) != string(b) {
				return "", errors.New("the two entries differ")
			}
		}
		return string(a), nil
	}
	return l.line()
}

// ago renders a time for tables.
func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
