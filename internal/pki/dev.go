package pki

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
)

// DevOptions configures a development PKI.
type DevOptions struct {
	// KeyType of every key (ECDSA P-256 by default; PyKMIP's TLS 1.2
	// profile needs ECDSA unless a CBC-SHA256 suite is enabled).
	KeyType KeyType
	// ServerDNSNames and ServerIPs go into the KMIP server certificate;
	// when both are empty it is issued for localhost and 127.0.0.1.
	ServerDNSNames []string
	ServerIPs      []net.IP
	// AgentName is the common name of the boot agent's certificate (the
	// array identity); "sedboot-agent" when empty.
	AgentName string
	// AdminName is the common name of the administrator tool's
	// certificate; "sedboot-admin" when empty.
	AdminName string
	// PeerName is the common name of the peer controller's certificate;
	// "sedboot-peer" when empty. The peer certificate is valid for the
	// server names too, so one file serves both ends of the link.
	PeerName string
}

// Dev is a development PKI written to a directory.
type Dev struct {
	// Dir holds every file.
	Dir string
	// CA is the authority that issued everything else.
	CA *CA
	// Server, Agent, Admin and Peer are the issued certificates.
	Server, Agent, Admin, Peer *Issued
}

// Names of the files a development PKI writes in its directory (each
// certificate as NAME.crt, its key as NAME.key with mode 0600).
const (
	DevCA     = "ca"
	DevServer = "server"
	DevAgent  = "agent"
	DevAdmin  = "admin"
	DevPeer   = "peer"
)

// CertFile is the path of the certificate file called name (one of the
// Dev* names).
func (d *Dev) CertFile(name string) string { return filepath.Join(d.Dir, name+".crt") }

// KeyFile is the path of the key file called name (one of the Dev* names).
func (d *Dev) KeyFile(name string) string { return filepath.Join(d.Dir, name+".key") }

// NewDev creates a CA and the server, agent, admin and peer certificates in
// dir (created with mode 0700 if missing). It refuses to overwrite an
// existing CA key so that a second run cannot silently replace a PKI that
// certificates were already issued from.
func NewDev(dir string, opts DevOptions) (*Dev, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("development PKI: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, DevCA+".key")); err == nil {
		return nil, fmt.Errorf("development PKI: %s already exists; remove the directory or choose another", filepath.Join(dir, DevCA+".key"))
	}
	ca, err := NewCA("sedboot development CA", opts.KeyType)
	if err != nil {
		return nil, fmt.Errorf("development PKI: %w", err)
	}
	dns, ips := opts.ServerDNSNames, opts.ServerIPs
	if len(dns) == 0 && len(ips) == 0 {
		dns = []string{"localhost"}
		ips = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	name := func(s, def string) string {
		if s == "" {
			return def
		}
		return s
	}
	d := &Dev{Dir: dir, CA: ca}
	reqs := []struct {
		file string
		dst  **Issued
		req  Request
	}{
		{DevServer, &d.Server, Request{CommonName: "sedboot-kms", Role: RoleServer, DNSNames: dns, IPs: ips}},
		{DevAgent, &d.Agent, Request{CommonName: name(opts.AgentName, "sedboot-agent"), Role: RoleClient}},
		{DevAdmin, &d.Admin, Request{CommonName: name(opts.AdminName, "sedboot-admin"), Role: RoleClient}},
		{DevPeer, &d.Peer, Request{CommonName: name(opts.PeerName, "sedboot-peer"), Role: RolePeer, DNSNames: dns, IPs: ips}},
	}
	for _, r := range reqs {
		r.req.KeyType = opts.KeyType
		r.req.Organization = "sedboot development"
		is, err := ca.Issue(r.req)
		if err != nil {
			return nil, fmt.Errorf("development PKI: %w", err)
		}
		if _, _, err := is.WriteFiles(dir, r.file); err != nil {
			return nil, fmt.Errorf("development PKI: %w", err)
		}
		*r.dst = is
	}
	// The CA key goes last: its presence marks a complete PKI.
	if _, _, err := ca.WriteFiles(dir, DevCA); err != nil {
		return nil, fmt.Errorf("development PKI: %w", err)
	}
	return d, nil
}
