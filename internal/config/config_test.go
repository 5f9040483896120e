package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
)

func testPEM(t *testing.T) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}))
}

func validDoc(t *testing.T) *Document {
	cert, key := testPEM(t)
	return &Document{
		Format: FormatVersion,
		Array:  Array{Serial: "ARRAY-0001", Slot: "A"},
		Mode:   ModeExternal,
		KMS: &KMS{
			Servers:    []Server{{Name: "kms0", Address: "10.0.2.100:5696"}, {Name: "kms1", Address: "kms1.example:5696"}},
			CA:         cert,
			ClientCert: cert,
			ClientKey:  key,
		},
		Network:    Network{Interface: "eth0", Mode: "static", Addresses: []string{"10.0.2.15/24"}, Gateway: "10.0.2.2"},
		Fabrics:    []Fabric{{Transport: "tcp", Address: "10.0.2.100", Port: 4420}},
		Root:       Root{Label: "realroot"},
		Deadlines:  Deadlines{Total: Duration(90 * time.Second)},
		Technician: Technician{Hash: "$scrypt$ln=15,r=8,p=1$c2FsdA$aGFzaA"},
		Keys: Inventory{Generations: []Generation{{Number: 1, State: GenActive, Created: time.Unix(0, 0).UTC(),
			Drives: []DriveKey{{Drive: "SIM0001", Name: "sedboot-ARRAY-0001--x--key-gen-1--SIM0001", IDs: map[string]string{"kms0": "17"}}}}}},
	}
}

func TestRoundTrip(t *testing.T) {
	doc := validDoc(t)
	b, err := Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatalf("parse of marshalled document: %v\n%s", err, b)
	}
	if got.Deadlines.Total.D(0) != 90*time.Second || got.Keys.Generations[0].Drives[0].IDs["kms0"] != "17" {
		t.Fatalf("round trip lost data: %+v", got)
	}
	if !strings.Contains(string(b), `"total": "1m30s"`) {
		t.Fatalf("durations are not written as strings:\n%s", b)
	}
}

func TestValidateNamesTheField(t *testing.T) {
	tests := []struct {
		field  string
		mutate func(d *Document)
	}{
		{"format", func(d *Document) { d.Format = 2 }},
		{"array.serial", func(d *Document) { d.Array.Serial = "" }},
		{"array.serial", func(d *Document) { d.Array.Serial = "has space" }},
		{"array.slot", func(d *Document) { d.Array.Slot = "C" }},
		{"array.key_prefix", func(d *Document) { d.Array.KeyPrefix = "Upper" }},
		{"mode", func(d *Document) { d.Mode = "magic" }},
		{"kms", func(d *Document) { d.KMS = nil }},
		{"kms.servers", func(d *Document) { d.KMS.Servers = nil }},
		{"kms.servers[1].address", func(d *Document) { d.KMS.Servers[1].Address = "kms1" }},
		{"kms.servers[0].address", func(d *Document) { d.KMS.Servers[0].Address = "h:99999" }},
		{"kms.servers[1].name", func(d *Document) { d.KMS.Servers[1].Name = "kms0" }},
		{"kms.ca", func(d *Document) { d.KMS.CA = "not pem" }},
		{"kms.client_key", func(d *Document) { d.KMS.ClientKey = d.KMS.ClientCert }},
		{"kms.version", func(d *Document) { d.KMS.Version = "2.0" }},
		{"network.mode", func(d *Document) { d.Network.Mode = "auto" }},
		{"network.addresses", func(d *Document) { d.Network.Addresses = nil }},
		{"network.addresses[0]", func(d *Document) { d.Network.Addresses = []string{"10.0.2.15"} }},
		{"network.gateway", func(d *Document) { d.Network.Gateway = "gw" }},
		{"network.interface", func(d *Document) { d.Network.Interface = "" }},
		{"network.mtu", func(d *Document) { d.Network.MTU = 100 }},
		{"fabrics[0].transport", func(d *Document) { d.Fabrics[0].Transport = "rdma" }},
		{"fabrics[0].nqn", func(d *Document) { d.Fabrics[0].NQN = "bogus" }},
		{"root", func(d *Document) { d.Root = Root{} }},
		{"root.uuid", func(d *Document) { d.Root.UUID = "1234" }},
		{"root.init", func(d *Document) { d.Root.Init = "sbin/init" }},
		{"technician.hash", func(d *Document) { d.Technician.Hash = "" }},
		{"technician.hash", func(d *Document) { d.Technician.Hash = "plaintext" }},
		{"keys.generations[0].state", func(d *Document) { d.Keys.Generations[0].State = "new" }},
		{"keys.generations[0].drives[0].ids", func(d *Document) { d.Keys.Generations[0].Drives[0].IDs = map[string]string{"nope": "1"} }},
		{"journal.op", func(d *Document) { d.Journal = &Journal{Op: "explode", To: 2, Step: "x"} }},
		{"journal.drives.SIM1", func(d *Document) {
			d.Journal = &Journal{Op: "rotate", To: 2, Step: "drives", Drives: map[string]string{"SIM1": "maybe"}}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.field, func(t *testing.T) {
			d := validDoc(t)
			tc.mutate(d)
			err := d.Validate()
			fe, ok := err.(*FieldError)
			if !ok {
				t.Fatalf("got %v, want a *FieldError for %s", err, tc.field)
			}
			if fe.Field != tc.field {
				t.Fatalf("error names %q (%v), want %q", fe.Field, err, tc.field)
			}
			if _, err := Marshal(d); err == nil {
				t.Fatal("Marshal wrote an invalid document")
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, doc, want string
	}{
		{"empty", "", "empty document"},
		{"syntax", "{\n  \"format\": 1,\n  \"array\": {\"serial\": }\n}", "line 3 column"},
		{"type", "{\"format\": \"one\"}", "format: line 1"},
		{"unknown field", "{\"format\": 1, \"colour\": \"red\"}", `unknown field "colour"`},
		{"trailing", "{\"format\": 1} {}", "trailing data"},
		{"bad duration", `{"format":1,"deadlines":{"total":"soon"}}`, `bad duration "soon"`},
		{"validation", `{"format":1}`, "array.serial"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
