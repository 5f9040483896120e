package boottest

import (
	"os"
	"testing"

	"github.com/sedboot/sedboot/images/rig"
	"github.com/sedboot/sedboot/internal/kms/pykmiptest"
	"github.com/sedboot/sedboot/internal/pki"
)

// startPyKMIP runs Debian's PyKMIP server for the test and returns it as a
// key server the rig can provision and the guest can reach.
func startPyKMIP(t *testing.T) *rig.KeyServer {
	t.Helper()
	s := pykmiptest.Start(t, pykmiptest.Options{})
	certFile, keyFile, err := s.IssueClient(rig.ArrayIdentity(arraySerial), pki.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	return &rig.KeyServer{Name: "pykmip", Addr: s.Addr, ServerName: "127.0.0.1", CA: s.CA,
		CAPEM: read(s.CAFile), ArrayCert: read(certFile), ArrayKey: read(keyFile)}
}
