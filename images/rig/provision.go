package rig

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/sedboot/sedboot/images/qemu"
	"github.com/sedboot/sedboot/internal/bootmedium"
	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/keys"
	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/secret"
	"github.com/sedboot/sedboot/internal/sed"
	"github.com/sedboot/sedboot/internal/techauth"
)

// Provisioned is the outcome of Provision: the inventory for the boot
// medium and, for the no-key-material checks of the tests, the secrets.
type Provisioned struct {
	Array      string
	Generation config.Generation
	// Secrets holds each drive's key and its derived PINs (test setup
	// keeps them to search for them; Zero releases them).
	Secrets map[string][]*secret.Secret
	// IDs maps a key name to its unique identifier on the server.
	IDs map[string]string
}

// Zero releases the secrets.
func (p *Provisioned) Zero() {
	for _, ss := range p.Secrets {
		for _, s := range ss {
			s.Zero()
		}
	}
}

// Provision enables every drive with its own new random key (derived SID
// and Admin1 PINs, key verifier, lock on power cycle) and registers the keys
// on ks as the array identity, in one Object Group. It is test and demo
// setup standing in for `sedctl enable`.
func (r *Rig) Provision(ctx context.Context, ks *KeyServer, array string) (*Provisioned, error) {
	created := time.Now().UTC().Truncate(time.Second)
	p := &Provisioned{Array: array, Secrets: map[string][]*secret.Secret{}, IDs: map[string]string{},
		Generation: config.Generation{Number: 1, Created: created, State: config.GenActive}}
	var specs []kms.SecretSpec
	for _, d := range r.Drives {
		key, err := secret.Random(keys.KeySize)
		if err != nil {
			return nil, err
		}
		sid, err := keys.PIN(key, keys.RoleSID, d.Serial)
		if err != nil {
			return nil, err
		}
		admin1, err := keys.PIN(key, keys.RoleAdmin1, d.Serial)
		if err != nil {
			return nil, err
		}
		p.Secrets[d.Serial] = []*secret.Secret{key, sid, admin1}
		name := keys.KeyName{Prefix: keys.DefaultPrefix, Array: array, Created: created, Generation: 1, Drive: d.Serial}
		specs = append(specs, kms.SecretSpec{Name: name.String(), Group: name.Group(), Value: key,
			Metadata: map[string]string{"array": array, "generation": "1", "drive": d.Serial}, Activate: true})
		p.Generation.Drives = append(p.Generation.Drives, config.DriveKey{Drive: d.Serial, Name: name.String()})
	}
	// Keys first (as sedctl enable's journal does), then the drives.
	conn, err := ks.Conn(ctx, false)
	if err != nil {
		return nil, fmt.Errorf("provision: connect to %s: %w", ks.Name, err)
	}
	regs, err := conn.RegisterAll(ctx, specs)
	conn.Close()
	if err != nil {
		return nil, fmt.Errorf("provision: register keys on %s: %w", ks.Name, err)
	}
	for i, rg := range regs {
		if rg.Err != nil {
			return nil, fmt.Errorf("provision: register %s: %w", specs[i].Name, rg.Err)
		}
		p.IDs[specs[i].Name] = rg.ID
		p.Generation.Drives[i].IDs = map[string]string{ks.Name: rg.ID}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(r.Drives))
	for i, d := range r.Drives {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := p.Secrets[d.Serial]
			_, errs[i] = r.HostDrive(i).Enable(ctx, sedEnable(s[1].Bytes(), s[2].Bytes(), array))
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("provision: %w", err)
	}
	return p, nil
}

func sedEnable(sid, admin1 []byte, array string) sed.EnableRequest {
	return sed.EnableRequest{SID: sid, Admin1: admin1, ArraySerial: array, Generation: 1}
}

// RegisterOn registers already provisioned keys on another server (a
// second key server holding the same keys) and records their identifiers.
func (p *Provisioned) RegisterOn(ctx context.Context, ks *KeyServer) error {
	var specs []kms.SecretSpec
	for _, dk := range p.Generation.Drives {
		name, err := keys.ParseName(keys.DefaultPrefix, dk.Name)
		if err != nil {
			return err
		}
		specs = append(specs, kms.SecretSpec{Name: dk.Name, Group: name.Group(), Value: p.Secrets[dk.Drive][0], Activate: true,
			Metadata: map[string]string{"array": p.Array, "generation": strconv.Itoa(p.Generation.Number), "drive": dk.Drive}})
	}
	conn, err := ks.Conn(ctx, false)
	if err != nil {
		return err
	}
	defer conn.Close()
	regs, err := conn.RegisterAll(ctx, specs)
	if err != nil {
		return err
	}
	for i, rg := range regs {
		if rg.Err != nil {
			return fmt.Errorf("register %s on %s: %w", specs[i].Name, ks.Name, rg.Err)
		}
		if p.Generation.Drives[i].IDs == nil {
			p.Generation.Drives[i].IDs = map[string]string{}
		}
		p.Generation.Drives[i].IDs[ks.Name] = rg.ID
	}
	return nil
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

// Document returns the boot-medium document for p (nil p: mode none).
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
	if p != nil {
		doc.Mode = config.ModeExternal
		doc.Keys.Generations = []config.Generation{p.Generation}
		k := &config.KMS{}
		for _, s := range o.Servers {
			k.Servers = append(k.Servers, config.Server{Name: s.KS.Name, Address: s.GuestAddr, ServerName: s.KS.ServerName})
		}
		if len(o.Servers) > 0 {
			first := o.Servers[0].KS
			k.CA, k.ClientCert, k.ClientKey = string(first.CAPEM), string(first.ArrayCert), string(first.ArrayKey)
		}
		doc.KMS = k
		// Keep only identifiers of the servers listed.
		listed := map[string]bool{}
		for _, s := range k.Servers {
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
