// Command kmsd is sedboot's small KMIP server for development, demos and
// tests: KMIP 1.0 to 1.4 over mutual TLS, Secret Data with the KMIP life
// cycle, Extractable and Sensitive enforced on Get, per-object owner and
// grants, an audit log without key material. See package
// internal/kmsserver.
//
//	kmsd init --dir D          create a development PKI, a master key and D/kmsd.json
//	kmsd serve --config F      serve until SIGINT or SIGTERM
//	kmsd serve --listen ... --cert ... --key ... --client-ca ... --db ... --master-key ...
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sedboot/sedboot/internal/kmsserver"
	"github.com/sedboot/sedboot/internal/pki"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

const usage = `usage:
  kmsd init --dir DIR [--listen ADDR] [--key-type ecdsa-p256|rsa-2048|rsa-3072]
            [--server-name NAME]... [--server-ip IP]... [--agent-name CN] [--admin-name CN] [--peer-name CN]
  kmsd serve --config FILE
  kmsd serve --listen ADDR --cert FILE --key FILE --client-ca FILE --db FILE --master-key FILE
             [--audit-log FILE|-] [--admin CN]... [--log-level LEVEL]
`

// run is kmsd's main, testable: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "init":
		return cmdInit(args[1:], stdout, stderr)
	case "serve":
		return cmdServe(ctx, args[1:], stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "kmsd: unknown command %q\n%s", args[0], usage)
	return exitUsage
}

// multi is a repeatable string flag.
type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func cmdInit(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kmsd init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "directory to create the PKI, master key and configuration in (required)")
	listen := fs.String("listen", kmsserver.DefaultListen, "address kmsd will listen on")
	keyType := fs.String("key-type", "ecdsa-p256", "key type of every certificate: ecdsa-p256, rsa-2048 or rsa-3072")
	agent := fs.String("agent-name", "sedboot-agent", "common name of the boot agent's (array identity's) certificate")
	admin := fs.String("admin-name", "sedboot-admin", "common name of the administrator's certificate")
	peer := fs.String("peer-name", "sedboot-peer", "common name of the peer controller's certificate")
	var names, ips multi
	fs.Var(&names, "server-name", "DNS name for the server certificate (repeatable; default localhost)")
	fs.Var(&ips, "server-ip", "IP address for the server certificate (repeatable; default 127.0.0.1)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *dir == "" || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "kmsd init: --dir is required and no other arguments are allowed\n%s", usage)
		return exitUsage
	}
	kt, err := pki.ParseKeyType(*keyType)
	if err != nil {
		fmt.Fprintf(stderr, "kmsd init: --key-type: %v\n", err)
		return exitUsage
	}
	var ipList []net.IP
	for _, s := range ips {
		ip := net.ParseIP(s)
		if ip == nil {
			fmt.Fprintf(stderr, "kmsd init: --server-ip: %q is not an IP address\n", s)
			return exitUsage
		}
		ipList = append(ipList, ip)
	}
	if host, _, err := net.SplitHostPort(*listen); err != nil {
		fmt.Fprintf(stderr, "kmsd init: --listen: %q is not host:port\n", *listen)
		return exitUsage
	} else if len(names) == 0 && len(ipList) == 0 && host != "" && host != "127.0.0.1" && host != "localhost" {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
			ipList = append(ipList, ip, net.IPv4(127, 0, 0, 1))
		} else if ip == nil {
			names = append(names, host, "localhost")
		}
	}
	confFile := filepath.Join(*dir, "kmsd.json")
	if _, err := os.Stat(confFile); err == nil {
		fmt.Fprintf(stderr, "kmsd init: %s already exists; choose another --dir\n", confFile)
		return exitFail
	}
	pkiDir := filepath.Join(*dir, "pki")
	d, err := pki.NewDev(pkiDir, pki.DevOptions{KeyType: kt, ServerDNSNames: names, ServerIPs: ipList,
		AgentName: *agent, AdminName: *admin, PeerName: *peer})
	if err != nil {
		fmt.Fprintf(stderr, "kmsd init: %v\n", err)
		return exitFail
	}
	if err := kmsserver.WriteMasterKey(filepath.Join(*dir, "master.key")); err != nil {
		fmt.Fprintf(stderr, "kmsd init: %v\n", err)
		return exitFail
	}
	fc := kmsserver.FileConfig{
		Listen:    *listen,
		Cert:      "pki/" + pki.DevServer + ".crt",
		Key:       "pki/" + pki.DevServer + ".key",
		ClientCA:  "pki/" + pki.DevCA + ".crt",
		DB:        "kmsd.db",
		MasterKey: "master.key",
		AuditLog:  "audit.log",
		Policy: kmsserver.Policy{
			Admins: []string{d.Admin.Cert.Subject.CommonName},
			GroupGrants: []kmsserver.GroupGrant{{Identity: d.Peer.Cert.Subject.CommonName, Group: "sedboot-*",
				Rights: []string{kmsserver.RightGet, kmsserver.RightRead}}},
		},
	}
	b, err := json.MarshalIndent(fc, "", "  ")
	if err != nil {
		fmt.Fprintf(stderr, "kmsd init: %v\n", err)
		return exitFail
	}
	if err := pki.WriteFileAtomic(confFile, append(b, '\n'), 0o600); err != nil {
		fmt.Fprintf(stderr, "kmsd init: %v\n", err)
		return exitFail
	}
	fmt.Fprintf(stdout, `kmsd: development key server set up in %s
  configuration   %s
  CA              %s
  server          %s (%s)
  agent           %s (CN %s)
  administrator   %s (CN %s)
  peer            %s (CN %s)
  master key      %s (seals the keys in the database; keep it with the database)
start it with:    kmsd serve --config %s
`, *dir, confFile, d.CertFile(pki.DevCA), d.CertFile(pki.DevServer), strings.Join(certNames(d.Server), ", "),
		d.CertFile(pki.DevAgent), d.Agent.Cert.Subject.CommonName,
		d.CertFile(pki.DevAdmin), d.Admin.Cert.Subject.CommonName,
		d.CertFile(pki.DevPeer), d.Peer.Cert.Subject.CommonName,
		filepath.Join(*dir, "master.key"), confFile)
	return exitOK
}

func certNames(is *pki.Issued) []string {
	out := append([]string(nil), is.Cert.DNSNames...)
	for _, ip := range is.Cert.IPAddresses {
		out = append(out, ip.String())
	}
	return out
}

func cmdServe(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("kmsd serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", "", "configuration file (JSON, see kmsd init)")
	var fc kmsserver.FileConfig
	fs.StringVar(&fc.Listen, "listen", "", "address to listen on (default "+kmsserver.DefaultListen+")")
	fs.StringVar(&fc.Cert, "cert", "", "server certificate (PEM)")
	fs.StringVar(&fc.Key, "key", "", "server private key (PEM)")
	fs.StringVar(&fc.ClientCA, "client-ca", "", "CA bundle for client certificates (PEM)")
	fs.StringVar(&fc.DB, "db", "", "database file")
	fs.StringVar(&fc.MasterKey, "master-key", "", "master key file (32 bytes, mode 0600)")
	fs.StringVar(&fc.AuditLog, "audit-log", "", "audit log file, or - for standard error")
	fs.StringVar(&fc.LogLevel, "log-level", "", "operational log level: debug, info, warn, error")
	var admins multi
	fs.Var(&admins, "admin", "administrator identity (client certificate CN; repeatable)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "kmsd serve: unexpected arguments %q\n%s", fs.Args(), usage)
		return exitUsage
	}
	var cfg *kmsserver.FileConfig
	var err error
	if *config != "" {
		if fc.Cert != "" || fc.Key != "" || fc.ClientCA != "" || fc.DB != "" || fc.MasterKey != "" || len(admins) > 0 {
			fmt.Fprintln(stderr, "kmsd serve: --config excludes --cert, --key, --client-ca, --db, --master-key and --admin (put them in the file)")
			return exitUsage
		}
		listen, audit, level := fc.Listen, fc.AuditLog, fc.LogLevel
		if cfg, err = kmsserver.LoadConfig(*config); err != nil {
			fmt.Fprintf(stderr, "kmsd serve: %v\n", err)
			return exitUsage
		}
		// Flags that make sense as overrides.
		if listen != "" {
			cfg.Listen = listen
		}
		if audit != "" {
			cfg.AuditLog = audit
		}
		if level != "" {
			cfg.LogLevel = level
		}
		if err := cfg.Validate(); err != nil {
			fmt.Fprintf(stderr, "kmsd serve: %v\n", err)
			return exitUsage
		}
	} else {
		fc.Policy.Admins = admins
		if err := fc.Validate(); err != nil {
			fmt.Fprintf(stderr, "kmsd serve: --%s\n", strings.Replace(err.Error(), "_", "-", 1))
			return exitUsage
		}
		cfg = &fc
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.Level()}))
	opts, err := cfg.Options()
	if err != nil {
		fmt.Fprintf(stderr, "kmsd serve: %v\n", err)
		return exitFail
	}
	defer clear(opts.MasterKey)
	auditOut, closeAudit, err := openAudit(cfg.Path(cfg.AuditLog), stderr)
	if err != nil {
		fmt.Fprintf(stderr, "kmsd serve: %v\n", err)
		return exitFail
	}
	defer closeAudit()
	opts.Audit = slog.New(slog.NewJSONHandler(auditOut, nil)).With("log", "audit")
	srv, err := kmsserver.New(opts)
	if err != nil {
		fmt.Fprintf(stderr, "kmsd serve: %v\n", err)
		return exitFail
	}
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		_ = srv.Shutdown(time.Second)
		fmt.Fprintf(stderr, "kmsd serve: listen %s: %v\n", cfg.Listen, err)
		return exitFail
	}
	log.Info("listening", "addr", l.Addr().String(), "admins", cfg.Policy.Admins)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case err := <-done:
		_ = srv.Shutdown(5 * time.Second)
		log.Error("server stopped", "error", fmt.Sprint(err))
		return exitFail
	case <-ctx.Done():
	}
	log.Info("shutting down")
	if err := srv.Shutdown(5 * time.Second); err != nil {
		log.Error("shutdown", "error", err.Error())
		return exitFail
	}
	if err := <-done; err != nil {
		log.Error("serve", "error", err.Error())
		return exitFail
	}
	log.Info("stopped")
	return exitOK
}

// openAudit opens the audit log for appending (mode 0600), or standard
// error for "" and "-".
func openAudit(path string, stderr io.Writer) (io.Writer, func(), error) {
	if path == "" || path == "-" {
		return stderr, func() {}, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("audit_log: %w", err)
	}
	return f, func() {
		if err := f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			fmt.Fprintf(stderr, "kmsd: close audit log: %v\n", err)
		}
	}, nil
}
