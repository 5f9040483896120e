package rig

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/sedboot/sedboot/images/qemu"
	"github.com/sedboot/sedboot/internal/bootmedium"
	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/keys"
	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/lifecycle"
	"github.com/sedboot/sedboot/internal/secret"
	"github.com/sedboot/sedboot/internal/techauth"
)

// Provisioned is the outcome of Provision: the array's enabled key
// generation, for boot-medium documents (Document).
type Provisioned struct {
	Array      string
	Generation config.Generation
}

// Array opens the array whose document is on the boot-medium image at
// medium as sedctl does on a controller: the rig's drives through the
// simulator's own interface, and ks under its host address (the document
// names the guest's), with the administrator's identity, or the array's
// own when ks has none (PyKMIP lets only an object's owner get it). The
// closer releases the medium.
func (r *Rig) Array(medium string, ks *KeyServer) (*lifecycle.Array, io.Closer, error) {
	m, f, err := bootmedium.Open(medium)
	if err != nil {
		return nil, nil, err
	}
	fail := func(err error) (*lifecycle.Array, io.Closer, error) {
		f.Close()
		return nil, nil, err
	}
	b, _, err := m.Read()
	if err != nil {
		return fail(err)
	}
	doc, err := config.Parse(b)
	if err != nil {
		return fail(err)
	}
	a := &lifecycle.Array{Doc: doc, Medium: m}
	for i := range r.Drives {
		a.Drives = append(a.Drives, r.HostDrive(i))
	}
	if a.Agent, err = ks.Client(false); err != nil {
		return fail(err)
	}
	a.Admin = a.Agent
	if ks.AdminCert != nil {
		if a.Admin, err = ks.Client(true); err != nil {
			return fail(err)
		}
	}
	return a, f, nil
}

// Provision enables encryption on the rig's drives through the product's
// own path, as `sedctl enable --mode external` does on a controller: it
// writes the document for o (mode none; key servers o.Servers, by default
// ks at GuestHost) to a new boot-medium image at medium and runs
// lifecycle.Enable: the key-server check, one random key per drive
// registered on ks and proven fetchable with the array's identity, then
// every drive enabled (derived PINs, key verifier, lock on power cycle)
// and verified, each step journaled on the medium. The medium then holds
// the enabled document.
func (r *Rig) Provision(ctx context.Context, ks *KeyServer, medium string, o DocOptions) (*Provisioned, error) {
	if len(o.Servers) == 0 {
		o.Servers = []GuestServer{{KS: ks, GuestAddr: fmt.Sprintf("%s:%d", GuestHost, KMIPPort)}}
	}
	doc, err := Document(nil, o)
	if err != nil {
		return nil, fmt.Errorf("provision: %w", err)
	}
	if err := WriteMedium(medium, doc, nil); err != nil {
		return nil, fmt.Errorf("provision: boot medium: %w", err)
	}
	a, closer, err := r.Array(medium, ks)
	if err != nil {
		return nil, fmt.Errorf("provision: %w", err)
	}
	defer closer.Close()
	if _, err := a.Enable(ctx, lifecycle.EnableOptions{Check: a.CheckFit}); err != nil {
		return nil, fmt.Errorf("provision: %w", err)
	}
	g := a.Doc.Keys.Active()
	if g == nil {
		return nil, errors.New("provision: enable left no active key generation")
	}
	return &Provisioned{Array: o.Array, Generation: *g}, nil
}

// Secrets fetches the provisioned keys from ks with the array's identity
// and derives each drive's PINs: serial -> key, SID PIN, Admin1 PIN (for
// tests that search for key material where none may be). The caller
// zeroes them.
func (p *Provisioned) Secrets(ctx context.Context, ks *KeyServer) (map[string][]*secret.Secret, error) {
	c, err := ks.Client(false)
	if err != nil {
		return nil, err
	}
	req := kms.FetchRequest{Group: keys.Group(keys.DefaultPrefix, p.Array)}
	for _, dk := range p.Generation.Drives {
		req.Keys = append(req.Keys, kms.KeyRef{Name: dk.Name, IDs: dk.IDs})
	}
	fr, err := c.Fetch(ctx, req)
	defer fr.Zero()
	if err != nil {
		return nil, fmt.Errorf("fetch the provisioned keys from %s: %w", ks.Name, err)
	}
	out := map[string][]*secret.Secret{}
	zero := func() {
		for _, ss := range out {
			for _, s := range ss {
				s.Zero()
			}
		}
	}
	for _, dk := range p.Generation.Drives {
		fetched := fr.Secrets[dk.Name]
		if fetched == nil {
			zero()
			return nil, fmt.Errorf("key %s was not fetched from %s", dk.Name, ks.Name)
		}
		key, err := fetched.Clone()
		if err != nil {
			zero()
			return nil, fmt.Errorf("key %s: %w", dk.Name, err)
		}
		out[dk.Drive] = []*secret.Secret{key}
		for _, role := range []keys.Role{keys.RoleSID, keys.RoleAdmin1} {
			pin, err := keys.PIN(key, role, dk.Drive)
			if err != nil {
				zero()
				return nil, err
			}
			out[dk.Drive] = append(out[dk.Drive], pin)
		}
	}
	return out, nil
}

// Revoke makes every key of p non-extractable on ks, as an administrator:
// the key server then refuses to release them (a cryptographic lock
// enforced by the server).
func (p *Provisioned) Revoke(ctx context.Context, ks *KeyServer) error {
	conn, err := ks.Conn(ctx, true)
	if err != nil {
		return err
	}
	defer conn.Close()
	for _, dk := range p.Generation.Drives {
		id := dk.IDs[ks.Name]
		if err := conn.SetExtractable(ctx, id, false); err != nil {
			return fmt.Errorf("revoke %s: %w", dk.Name, err)
		}
	}
	return nil
}

// GuestServer is how the guest reaches a key server.
type GuestServer struct {
	KS *KeyServer
	// GuestAddr is the address:port in the guest.
	GuestAddr string
}

// DocOptions shape the boot-medium document.
type DocOptions struct {
	Array string
	// Servers in order (mode external); empty: mode none.
	Servers []GuestServer
	// DHCP instead of the static address.
	DHCP bool
	// RootUUID or RootLabel name the real root.
	RootUUID, RootLabel string
	// Technician is the recovery credential.
	Technician string
	// KeyAttempt bounds one key-server attempt (default 3s).
	KeyAttempt time.Duration
}

// Document returns a boot-medium document with the key servers o lists:
// in mode external with p's key generation, or without p in mode none
// (what a controller has before enabling).
func Document(p *Provisioned, o DocOptions) (*config.Document, error) {
	hash, err := techauth.Hash(o.Technician)
	if err != nil {
		return nil, err
	}
	ka := o.KeyAttempt
	if ka == 0 {
		ka = 3 * time.Second
	}
	doc := &config.Document{
		Format: config.FormatVersion,
		Array:  config.Array{Serial: o.Array, Slot: "A"},
		Mode:   config.ModeNone,
		Network: config.Network{Interface: "eth0", Mode: "static", Addresses: []string{qemu.GuestIP + "/24"},
			Gateway: qemu.GuestGateway},
		Fabrics:    []config.Fabric{{Transport: "tcp", Address: GuestHost, Port: NVMePort}},
		Root:       config.Root{UUID: o.RootUUID, Label: o.RootLabel, FSType: "ext4", Init: "/sbin/init"},
		Deadlines:  config.Deadlines{Total: config.Duration(3 * time.Minute), KeyAttempt: config.Duration(ka)},
		Technician: config.Technician{Hash: hash, MaxAttempts: 3, Delay: config.Duration(200 * time.Millisecond)},
		Updated:    time.Now().UTC(),
	}
	if o.DHCP {
		doc.Network = config.Network{Interface: "eth0", Mode: "dhcp"}
	}
	if len(o.Servers) > 0 || p != nil {
		k := &config.KMS{}
		for _, s := range o.Servers {
			k.Servers = append(k.Servers, config.Server{Name: s.KS.Name, Address: s.GuestAddr, ServerName: s.KS.ServerName})
		}
		if len(o.Servers) > 0 {
			first := o.Servers[0].KS
			k.CA, k.ClientCert, k.ClientKey = string(first.CAPEM), string(first.ArrayCert), string(first.ArrayKey)
		}
		doc.KMS = k
	}
	if p != nil {
		doc.Mode = config.ModeExternal
		doc.Keys.Generations = []config.Generation{p.Generation}
		// Keep only identifiers of the servers listed.
		listed := map[string]bool{}
		for _, s := range doc.KMS.Servers {
			listed[s.Name] = true
		}
		g := &doc.Keys.Generations[0]
		g.Drives = append([]config.DriveKey(nil), g.Drives...)
		for i := range g.Drives {
			ids := map[string]string{}
			for srv, id := range g.Drives[i].IDs {
				if listed[srv] {
					ids[srv] = id
				}
			}
			g.Drives[i].IDs = ids
		}
	}
	return doc, nil
}

// WriteMedium writes doc (or raw bytes, when doc is nil) to a new
// boot-medium image at path.
func WriteMedium(path string, doc *config.Document, raw []byte) error {
	if doc != nil {
		var err error
		if raw, err = config.Marshal(doc); err != nil {
			return err
		}
	}
	os.Remove(path)
	if err := bootmedium.Create(path, bootmedium.MinSize); err != nil {
		return err
	}
	m, f, err := bootmedium.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = m.Write(raw)
	return err
}

// Forward is one guest -> host forward.
type Forward = qemu.Forward
