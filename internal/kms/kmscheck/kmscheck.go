// Package kmscheck is the logic of "sedctl kms check", the step that
// tests the key servers before anything irreversible (enabling drive
// encryption) depends on them. For each configured server it checks the
// TCP connection, the TLS handshake (certificate subject, issuer, expiry,
// version and cipher suite), the KMIP version, Query, and runs the
// capability probe of package kms (which registers, fetches and destroys
// probe secrets). It prints a table per server or JSON, and says for each
// server whether it is fit, and if not why and what to fix.
package kmscheck

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/pki"
)

// Config configures a check.
type Config struct {
	// KMS is the client configuration to check: the servers and the TLS
	// identity the array will use.
	KMS kms.Config
	// Other is an optional second identity (another certificate for the
	// same servers, e.g. the administrator's) used to check that a
	// server refuses Get to an identity an object was not granted to.
	Other *kms.Config
	// RequireLock makes a server that cannot enforce a cryptographic
	// lock (refuse Get once a key is made non-extractable, sensitive or
	// is revoked) unfit rather than only warned about.
	RequireLock bool
	// Prefix names the probe objects (default "sedboot-probe").
	Prefix string
	// ExpiryWarning warns about certificates expiring within this time
	// (default 30 days).
	ExpiryWarning time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Status of a step.
type Status string

// Step statuses.
const (
	OK      Status = "ok"
	Warn    Status = "warn"
	Fail    Status = "FAIL"
	Skipped Status = "skip"
)

// Step is one line of a server's table.
type Step struct {
	Name    string        `json:"name"`
	Status  Status        `json:"status"`
	Detail  string        `json:"detail,omitempty"`
	Latency time.Duration `json:"latency_ns,omitempty"`
}

// Problem is a reason a server is unfit (Fatal) or a warning, with what
// to do about it.
type Problem struct {
	Fatal bool   `json:"fatal"`
	What  string `json:"what"`
	Fix   string `json:"fix,omitempty"`
}

// CertInfo describes a certificate.
type CertInfo struct {
	Subject  string    `json:"subject"`
	Issuer   string    `json:"issuer"`
	NotAfter time.Time `json:"not_after"`
	Names    []string  `json:"names,omitempty"`
}

func certInfo(c *x509.Certificate) *CertInfo {
	ci := &CertInfo{Subject: c.Subject.String(), Issuer: c.Issuer.String(), NotAfter: c.NotAfter}
	ci.Names = append(ci.Names, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		ci.Names = append(ci.Names, ip.String())
	}
	return ci
}

// ServerReport is the result for one server.
type ServerReport struct {
	Name        string            `json:"name"`
	Address     string            `json:"address"`
	Fit         bool              `json:"fit"`
	Steps       []Step            `json:"steps"`
	TLSVersion  string            `json:"tls_version,omitempty"`
	CipherSuite string            `json:"cipher_suite,omitempty"`
	Certificate *CertInfo         `json:"certificate,omitempty"`
	KMIPVersion string            `json:"kmip_version,omitempty"`
	Query       *kms.ServerInfo   `json:"query,omitempty"`
	Probe       *kms.Capabilities `json:"probe,omitempty"`
	Problems    []Problem         `json:"problems,omitempty"`
}

func (r *ServerReport) step(name string, st Status, lat time.Duration, format string, args ...any) {
	r.Steps = append(r.Steps, Step{Name: name, Status: st, Latency: lat, Detail: fmt.Sprintf(format, args...)})
}

func (r *ServerReport) problem(fatal bool, what, fix string) {
	r.Problems = append(r.Problems, Problem{Fatal: fatal, What: what, Fix: fix})
}

// Report is the result of a check.
type Report struct {
	// OK is true when every server is fit.
	OK bool `json:"ok"`
	// Client describes the client certificate checked with.
	Client *CertInfo `json:"client_certificate,omitempty"`
	// Problems that concern the client side (certificate expiry).
	Problems []Problem      `json:"problems,omitempty"`
	Servers  []ServerReport `json:"servers"`
	Elapsed  time.Duration  `json:"elapsed_ns"`
}

// Run checks every server, writes the report to w (a table, or JSON when
// asJSON) and reports whether every server is fit. The error is set only
// when the configuration is unusable or ctx ended.
func Run(ctx context.Context, cfg Config, w io.Writer, asJSON bool) (bool, error) {
	rep, err := Check(ctx, cfg)
	if err != nil {
		return false, err
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return false, err
		}
	} else if err := rep.WriteText(w); err != nil {
		return false, err
	}
	return rep.OK, nil
}

// Check checks every server of cfg.KMS in order.
func Check(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ExpiryWarning == 0 {
		cfg.ExpiryWarning = 30 * 24 * time.Hour
	}
	start := cfg.Now()
	client, err := kms.New(cfg.KMS)
	if err != nil {
		return nil, err
	}
	var other *kms.Client
	if cfg.Other != nil {
		oc := *cfg.Other
		oc.Servers = cfg.KMS.Servers
		if other, err = kms.New(oc); err != nil {
			return nil, fmt.Errorf("second identity: %w", err)
		}
	}
	rep := &Report{OK: true}
	rep.Client, rep.Problems = clientCert(cfg)
	for _, p := range rep.Problems {
		if p.Fatal {
			rep.OK = false
		}
	}
	for _, srv := range client.Servers() {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		sr := checkServer(ctx, cfg, client, other, srv)
		if !sr.Fit {
			rep.OK = false
		}
		rep.Servers = append(rep.Servers, sr)
	}
	rep.Elapsed = cfg.Now().Sub(start)
	return rep, nil
}

// clientCert reads the client certificate to report its expiry.
func clientCert(cfg Config) (*CertInfo, []Problem) {
	data := cfg.KMS.CertPEM
	if cfg.KMS.CertFile != "" {
		b, err := os.ReadFile(cfg.KMS.CertFile)
		if err != nil {
			return nil, nil // kms.New already vetted it
		}
		data = b
	}
	if len(data) == 0 {
		return nil, []Problem{{Fatal: true, What: "no client certificate configured",
			Fix: "KMIP servers authenticate clients by certificate: configure client_cert and client_key"}}
	}
	certs, err := pki.ParseCertsPEM(data)
	if err != nil {
		return nil, nil
	}
	c := certs[0]
	ci := certInfo(c)
	now := cfg.Now()
	switch {
	case now.After(c.NotAfter):
		return ci, []Problem{{Fatal: true, What: fmt.Sprintf("the client certificate %s expired on %s", c.Subject, c.NotAfter.Format("2006-01-02")),
			Fix: "issue a new client certificate for the array and install it"}}
	case now.Before(c.NotBefore):
		return ci, []Problem{{Fatal: true, What: fmt.Sprintf("the client certificate %s is not valid before %s", c.Subject, c.NotBefore.Format(time.RFC3339)),
			Fix: "check the controller's clock, or the certificate's validity"}}
	case c.NotAfter.Sub(now) < cfg.ExpiryWarning:
		return ci, []Problem{{What: fmt.Sprintf("the client certificate %s expires on %s", c.Subject, c.NotAfter.Format("2006-01-02")),
			Fix: "renew it before then, or the array will not boot"}}
	}
	return ci, nil
}

func checkServer(ctx context.Context, cfg Config, client, other *kms.Client, srv kms.Server) (sr ServerReport) {
	ccfg := client.Config()
	sr = ServerReport{Name: srv.Label(), Address: srv.Address}
	defer func() {
		sr.Fit = true
		for _, p := range sr.Problems {
			if p.Fatal {
				sr.Fit = false
			}
		}
	}()

	// TCP.
	t0 := cfg.Now()
	dctx, cancel := context.WithTimeout(ctx, ccfg.AttemptTimeout)
	var d net.Dialer
	raw, err := d.DialContext(dctx, "tcp", srv.Address)
	cancel()
	if err != nil {
		sr.step("TCP connect", Fail, 0, "%v", err)
		sr.problem(true, fmt.Sprintf("cannot open a TCP connection to %s: %v", srv.Address, err),
			"check the address and port, that the server runs, and that no firewall blocks the path")
		return sr
	}
	_ = raw.Close()
	sr.step("TCP connect", OK, cfg.Now().Sub(t0), "%s", srv.Address)

	// TLS and KMIP version.
	conn, err := client.Connect(ctx, srv)
	if err != nil {
		diagnoseConnect(ctx, &sr, ccfg, srv, err)
		return sr
	}
	defer conn.Close()
	info := conn.Info()
	sr.TLSVersion, sr.CipherSuite, sr.KMIPVersion = info.TLSVersion, info.CipherSuite, info.KMIPVersion
	sr.step("TLS handshake", OK, info.TLS, "%s, %s", info.TLSVersion, info.CipherSuite)
	if len(info.State.PeerCertificates) > 0 {
		leaf := info.State.PeerCertificates[0]
		sr.Certificate = certInfo(leaf)
		left := leaf.NotAfter.Sub(cfg.Now())
		st := OK
		if left < cfg.ExpiryWarning {
			st = Warn
			sr.problem(false, fmt.Sprintf("the server certificate expires on %s", leaf.NotAfter.Format("2006-01-02")),
				"have the key server's certificate renewed before then, or the array will not boot")
		}
		sr.step("server certificate", st, 0, "%s, issued by %s, expires %s (%d days)",
			leaf.Subject, leaf.Issuer, leaf.NotAfter.Format("2006-01-02"), int(left.Hours()/24))
	}
	if info.State.Version == tls.VersionTLS12 && !strings.Contains(info.CipherSuite, "GCM") && !strings.Contains(info.CipherSuite, "CHACHA20") {
		sr.problem(false, "the TLS 1.2 cipher suite "+info.CipherSuite+" is not an AEAD suite",
			"prefer an ECDHE suite with AES-GCM (for PyKMIP: an ECDSA server certificate)")
	}
	how := "negotiated"
	if ccfg.Version != "" {
		how = "forced by configuration"
	}
	sr.step("KMIP version", OK, info.Version, "%s (%s)", info.KMIPVersion, how)

	// Query.
	t2 := cfg.Now()
	if q, err := conn.Query(ctx); err != nil {
		sr.step("Query", Warn, cfg.Now().Sub(t2), "%v", err)
		sr.problem(false, "Query failed: "+err.Error(), "")
	} else {
		sr.Query = q
		sr.step("Query", OK, cfg.Now().Sub(t2), "vendor %q, %d operations advertised", q.Vendor, len(q.Operations))
	}

	// Capability probe.
	var otherConn *kms.Conn
	if other != nil {
		if otherConn, err = other.Connect(ctx, srv); err != nil {
			sr.problem(false, "could not connect as the second identity: "+err.Error(),
				"check the second certificate; the policy check is skipped")
		} else {
			defer otherConn.Close()
		}
	}
	t3 := cfg.Now()
	caps, err := conn.Probe(ctx, kms.ProbeOptions{Other: otherConn, Prefix: cfg.Prefix})
	if caps == nil {
		sr.step("capability probe", Fail, cfg.Now().Sub(t3), "%v", err)
		sr.problem(true, "the capability probe could not run: "+err.Error(), "")
		return sr
	}
	sr.Probe = caps
	for _, f := range caps.Findings {
		sr.Steps = append(sr.Steps, Step{Name: f.Check, Status: findingStatus(f), Detail: string(f.Verdict) + ": " + f.Detail})
	}
	if err != nil {
		sr.problem(true, "the capability probe did not finish: "+err.Error(), "run the check again")
	}
	judge(&sr, cfg, caps)
	return sr
}

// findingStatus maps a probe verdict to a table status.
func findingStatus(f kms.Finding) Status {
	switch {
	case f.Verdict == kms.Skipped:
		return Skipped
	case f.Verdict == kms.Yes:
		return OK
	case f.Verdict == kms.Unknown:
		return Warn
	case required[f.Check] != "":
		return Fail
	}
	return Warn
}

// required are the checks a server must pass to hold an array's keys,
// with what to do when it does not.
var required = map[string]string{
	kms.CheckRegister:   "the server must accept Secret Data (Password) objects with a Name: check the client's permissions on the server",
	kms.CheckLocate:     "the server must find objects by Name (and Object Group)",
	kms.CheckGet:        "the server must return the registered value intact to its owner",
	kms.CheckBatchedGet: "the server must answer several Gets in one request, in order: boot fetches every key in one request",
	kms.CheckDestroy:    "the server must destroy objects: retired key generations are destroyed",
}

// judge turns the probe's findings into problems.
func judge(sr *ServerReport, cfg Config, caps *kms.Capabilities) {
	for _, chk := range []string{kms.CheckRegister, kms.CheckLocate, kms.CheckGet, kms.CheckBatchedGet, kms.CheckDestroy} {
		if f := caps.Finding(chk); f.Verdict != kms.Yes {
			sr.problem(true, fmt.Sprintf("%s: %s (%s)", chk, f.Verdict, f.Detail), required[chk])
		}
	}
	for chk, fix := range map[string]string{
		kms.CheckObjectGroup: "keys will be found by Name only, not by the array's Object Group",
		kms.CheckActivate:    "keys will stay Pre-Active",
		kms.CheckRevoke:      "retired generations cannot be revoked before they are destroyed",
	} {
		if f := caps.Finding(chk); f.Verdict == kms.No {
			sr.problem(false, fmt.Sprintf("%s: %s", chk, f.Detail), fix)
		}
	}
	switch caps.Metadata {
	case kms.MetadataASI:
		sr.problem(false, "the server rejects x- custom attributes", "sedboot stores key metadata as Application Specific Information (namespace \"sedboot\") on this server")
	case kms.MetadataNone:
		sr.problem(false, "the server takes neither x- attributes nor Application Specific Information", "keys will carry no sedboot metadata; names still identify them")
	}
	if ok, how := caps.CanLock(); ok {
		sr.Steps = append(sr.Steps, Step{Name: "cryptographic lock", Status: OK, Detail: "possible: the server " + how})
	} else {
		what := "the server cannot enforce a cryptographic lock: it does not refuse Get of a key made non-extractable, sensitive or revoked (see the \"refuses Get\" lines)"
		fix := "use a key server that enforces Extractable or Sensitive on Get (kmsd does; Debian's PyKMIP does not), or accept that \"sedctl lock\" cannot stop key release"
		sr.Steps = append(sr.Steps, Step{Name: "cryptographic lock", Status: map[bool]Status{true: Fail, false: Warn}[cfg.RequireLock], Detail: "not possible"})
		sr.problem(cfg.RequireLock, what, fix)
	}
	if len(caps.Leftovers) > 0 {
		sr.problem(false, "probe objects could not be destroyed: "+strings.Join(caps.Leftovers, ", "),
			"destroy them with the server's own tools")
	}
}

// diagnoseConnect explains a failed TLS handshake or version negotiation.
// For certificate problems it looks at what the server presents through a
// second handshake that does not verify and sends nothing.
func diagnoseConnect(ctx context.Context, sr *ServerReport, ccfg kms.Config, srv kms.Server, err error) {
	var ke *kms.Error
	stage := "TLS handshake"
	if errors.As(err, &ke) && ke.Op != "tls" && ke.Op != "tcp" {
		stage = "KMIP version"
		sr.step("TLS handshake", OK, 0, "completed")
	}
	sr.step(stage, Fail, 0, "%v", err)
	presented := peek(ctx, ccfg, srv)
	if presented != nil {
		sr.Certificate = certInfo(presented)
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "not signed by a trusted CA"):
		fix := "set the CA bundle to the CA that issued the server's certificate"
		if presented != nil {
			fix += fmt.Sprintf(" (the server presents %s, issued by %s)", presented.Subject, presented.Issuer)
		}
		sr.problem(true, "the server's certificate is not signed by a CA in the configured bundle", fix)
	case strings.Contains(msg, "does not match the server name"):
		fix := "set server_name to a name the certificate carries, or have the certificate reissued with the address used"
		if presented != nil {
			fix += fmt.Sprintf(" (it carries %s)", strings.Join(certInfo(presented).Names, ", "))
		}
		sr.problem(true, "the server's certificate does not carry the name "+serverName(srv), fix)
	case strings.Contains(msg, "server certificate is invalid") && presented != nil && time.Now().After(presented.NotAfter):
		sr.problem(true, fmt.Sprintf("the server's certificate expired on %s", presented.NotAfter.Format("2006-01-02")),
			"have the key server's certificate renewed")
	case strings.Contains(msg, "refused our TLS handshake"):
		sr.problem(true, "the server refused the TLS handshake or our client certificate ("+msg+")",
			"check that the client certificate is present, unexpired, has the clientAuth usage and is signed by a CA the server trusts; for a TLS 1.2-only server with an RSA certificate, enable a CBC-SHA256 cipher suite")
	case errors.Is(err, kms.ErrNotSupported):
		sr.problem(true, "no common KMIP version: "+msg, "this client speaks KMIP 1.0 to 1.4")
	case kms.IsTransient(err):
		sr.problem(true, "the connection failed: "+msg, "check that the address is a KMIP server (port 5696 by default) and that it answers in time")
	default:
		sr.problem(true, msg, "")
	}
}

func serverName(srv kms.Server) string {
	if srv.ServerName != "" {
		return srv.ServerName
	}
	host, _, _ := net.SplitHostPort(srv.Address)
	return host
}

// peek fetches the server's certificate without verifying it, for
// diagnosis only: the connection is closed right after the handshake.
func peek(ctx context.Context, ccfg kms.Config, srv kms.Server) *x509.Certificate {
	ctx, cancel := context.WithTimeout(ctx, ccfg.AttemptTimeout)
	defer cancel()
	// Not verifying is the point: this handshake only shows what the
	// server presents after the verified one failed.
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, ServerName: serverName(srv)}}
	c, err := d.DialContext(ctx, "tcp", srv.Address)
	if err != nil {
		return nil
	}
	defer c.Close()
	certs := c.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return nil
	}
	return certs[0]
}

// Err returns nil when every server is fit, else an error naming each
// fatal problem.
func (r *Report) Err() error {
	if r.OK {
		return nil
	}
	var bad []string
	for _, p := range r.Problems {
		if p.Fatal {
			bad = append(bad, "client: "+p.What)
		}
	}
	for _, s := range r.Servers {
		for _, p := range s.Problems {
			if p.Fatal {
				bad = append(bad, s.Name+": "+p.What)
			}
		}
	}
	return fmt.Errorf("kms check: not every key server is fit: %s", strings.Join(bad, "; "))
}

// WriteText writes the report as tables.
func (r *Report) WriteText(w io.Writer) error {
	fit := 0
	for _, s := range r.Servers {
		if s.Fit {
			fit++
		}
	}
	verdict := "ready"
	if !r.OK {
		verdict = "NOT READY"
	}
	b := &strings.Builder{}
	fmt.Fprintf(b, "KMIP key servers: %d checked, %d fit: %s\n", len(r.Servers), fit, verdict)
	if r.Client != nil {
		fmt.Fprintf(b, "client certificate: %s, issued by %s, expires %s\n", r.Client.Subject, r.Client.Issuer, r.Client.NotAfter.Format("2006-01-02"))
	}
	writeProblems(b, r.Problems)
	for _, s := range r.Servers {
		state := "FIT"
		if !s.Fit {
			state = "UNFIT"
		}
		fmt.Fprintf(b, "\n%s (%s): %s\n", s.Name, s.Address, state)
		tw := tabwriter.NewWriter(b, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  check\tresult\ttime\tdetail")
		for _, st := range s.Steps {
			lat := ""
			if st.Latency > 0 {
				lat = st.Latency.Round(100 * time.Microsecond).String()
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", st.Name, st.Status, lat, st.Detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		writeProblems(b, s.Problems)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func writeProblems(b *strings.Builder, ps []Problem) {
	var fatal, warn []Problem
	for _, p := range ps {
		if p.Fatal {
			fatal = append(fatal, p)
		} else {
			warn = append(warn, p)
		}
	}
	for _, group := range []struct {
		title string
		ps    []Problem
	}{{"why unfit", fatal}, {"warnings", warn}} {
		if len(group.ps) == 0 {
			continue
		}
		fmt.Fprintf(b, "  %s:\n", group.title)
		for _, p := range group.ps {
			fmt.Fprintf(b, "    - %s\n", p.What)
			if p.Fix != "" {
				fmt.Fprintf(b, "      fix: %s\n", p.Fix)
			}
		}
	}
}
