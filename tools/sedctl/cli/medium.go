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
	"time"

	"golang.org/x/term"

	"github.com/sedboot/sedboot/internal/bootmedium"
	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/techauth"
)

// flags builds a subcommand's flag set; parse handles -h and mistakes.
func flags(e *env, name, argsUsage string) *flag.FlagSet {
	fs := flag.NewFlagSet("sedctl "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: sedctl %s [flags] %s\n", name, argsUsage)
		fs.PrintDefaults()
	}
	return fs
}

func parse(fs *flag.FlagSet, args []string, nargs int) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitError{0}
		}
		return exitError{2}
	}
	if nargs >= 0 && fs.NArg() != nargs {
		fs.Usage()
		return exitError{2}
	}
	return nil
}

// mediumFlag adds the common --medium flag.
func mediumFlag(fs *flag.FlagSet) *string {
	return fs.String("medium", "", "boot medium: an image file or block device (default $SEDBOOT_MEDIUM, else the one found on this machine)")
}

// openMedium opens the named medium or finds the machine's one.
func openMedium(e *env, path string) (*bootmedium.Medium, io.Closer, error) {
	if path == "" {
		path = e.getenv("SEDBOOT_MEDIUM")
	}
	if path == "" {
		found, err := bootmedium.Find("/sys", "/dev")
		if err != nil {
			return nil, nil, err
		}
		switch len(found) {
		case 0:
			return nil, nil, errors.New("no boot medium found on this machine: name one with --medium")
		case 1:
			path = found[0]
		default:
			return nil, nil, fmt.Errorf("several boot media found (%s): name one with --medium", strings.Join(found, ", "))
		}
	}
	m, f, err := bootmedium.Open(path)
	if err != nil {
		return nil, nil, err
	}
	return m, f, nil
}

// loadDoc reads and parses the medium's document.
func loadDoc(m *bootmedium.Medium) (*config.Document, error) {
	b, _, err := m.Read()
	if err != nil {
		return nil, err
	}
	return config.Parse(b)
}

// saveDoc validates and writes doc as the medium's newest document.
func saveDoc(m *bootmedium.Medium, doc *config.Document) error {
	doc.Updated = time.Now().UTC()
	b, err := config.Marshal(doc)
	if err != nil {
		return err
	}
	_, err = m.Write(b)
	return err
}

func readDocFile(path string) (*config.Document, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	doc, err := config.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return doc, nil
}

func cmdMediumInit(_ context.Context, e *env, args []string) error {
	fs := flags(e, "medium init", "DOCUMENT.json")
	medium := mediumFlag(fs)
	create := fs.Int64("create", 0, "create the medium as an image file of this many bytes first (at least 2 MiB)")
	force := fs.Bool("force", false, "replace a document already on the medium")
	if err := parse(fs, args, 1); err != nil {
		return err
	}
	doc, err := readDocFile(fs.Arg(0))
	if err != nil {
		return err
	}
	if *create > 0 {
		if *medium == "" {
			return usageError{"--create needs --medium naming the image file"}
		}
		if err := bootmedium.Create(*medium, *create); err != nil {
			return err
		}
	}
	m, c, err := openMedium(e, *medium)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, _, err := m.Read(); err == nil && !*force {
		return errors.New("the medium already holds a document: use 'medium import' to change it, or --force to replace it")
	}
	if err := saveDoc(m, doc); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "boot medium written: array %s controller %s, mode %s\n", doc.Array.Serial, doc.Array.Slot, doc.Mode)
	return nil
}

func cmdMediumShow(_ context.Context, e *env, args []string) error {
	fs := flags(e, "medium show", "")
	medium := mediumFlag(fs)
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	m, c, err := openMedium(e, *medium)
	if err != nil {
		return err
	}
	defer c.Close()
	doc, err := loadDoc(m)
	if err != nil {
		return err
	}
	if doc.KMS != nil && doc.KMS.ClientKey != "" {
		doc.KMS.ClientKey = "(redacted: use 'medium export' for the full document)"
	}
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}

func cmdMediumExport(_ context.Context, e *env, args []string) error {
	fs := flags(e, "medium export", "FILE.json")
	medium := mediumFlag(fs)
	force := fs.Bool("force", false, "overwrite FILE")
	if err := parse(fs, args, 1); err != nil {
		return err
	}
	m, c, err := openMedium(e, *medium)
	if err != nil {
		return err
	}
	defer c.Close()
	b, _, err := m.Read()
	if err != nil {
		return err
	}
	mode := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if *force {
		mode = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(fs.Arg(0), mode, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "exported to %s (it holds the array's TLS private key: keep it safe)\n", fs.Arg(0))
	return nil
}

func cmdMediumImport(_ context.Context, e *env, args []string) error {
	fs := flags(e, "medium import", "FILE.json")
	medium := mediumFlag(fs)
	if err := parse(fs, args, 1); err != nil {
		return err
	}
	doc, err := readDocFile(fs.Arg(0))
	if err != nil {
		return err
	}
	m, c, err := openMedium(e, *medium)
	if err != nil {
		return err
	}
	defer c.Close()
	old, err := loadDoc(m)
	if err != nil {
		return fmt.Errorf("current document: %w (use 'medium init --force' to replace an unreadable one)", err)
	}
	if old.Array.Serial != doc.Array.Serial {
		return fmt.Errorf("array.serial changes from %q to %q: that is a different array; refusing", old.Array.Serial, doc.Array.Serial)
	}
	if old.Journal != nil && !sameJournal(old.Journal, doc.Journal) {
		return fmt.Errorf("an interrupted %s is recorded on the medium: finish it first (run 'sedctl %s' again)", old.Journal.Op, old.Journal.Op)
	}
	if err := saveDoc(m, doc); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, "boot medium updated")
	return nil
}

func sameJournal(a, b *config.Journal) bool {
	if b == nil {
		return false
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

func cmdTechnicianSet(_ context.Context, e *env, args []string) error {
	fs := flags(e, "technician set", "")
	medium := mediumFlag(fs)
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	m, c, err := openMedium(e, *medium)
	if err != nil {
		return err
	}
	defer c.Close()
	doc, err := loadDoc(m)
	if err != nil {
		return err
	}
	cred, err := readNewCredential(e)
	if err != nil {
		return err
	}
	h, err := techauth.Hash(cred)
	if err != nil {
		return err
	}
	doc.Technician.Hash = h
	if err := saveDoc(m, doc); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, "technician credential set")
	return nil
}

// readNewCredential asks twice on a terminal, or reads one line from a
// non-terminal stdin (automation).
func readNewCredential(e *env) (string, error) {
	if f, ok := e.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(e.stderr, "new technician credential: ")
		a, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(e.stderr)
		if err != nil {
			return "", err
		}
		fmt.Fprint(e.stderr, "again: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(e.stderr)
		if err != nil {
			return "", err
		}
		if string(a) != string(b) {
			return "", errors.New("the two entries differ; nothing changed")
		}
		return string(a), nil
	}
	line, err := bufio.NewReader(e.stdin).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return "", errors.New("read the credential from standard input: no line given")
	}
	return strings.TrimRight(line, "\r\n"), nil
}
