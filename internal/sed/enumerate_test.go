package sed

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sedboot/sedboot/internal/sed/transport"
)

// fakeTree builds a sysfs and /dev tree under a temporary root.
type fakeTree struct {
	t    *testing.T
	root string
}

func (f fakeTree) file(path, content string) {
	f.t.Helper()
	p := filepath.Join(f.root, path)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f fakeTree) dir(path string) {
	f.t.Helper()
	if err := os.MkdirAll(filepath.Join(f.root, path), 0o755); err != nil {
		f.t.Fatal(err)
	}
}

func vpd83(naa []byte) string {
	body := append([]byte{0x01, 0x03, 0, byte(len(naa))}, naa...)
	return string(append([]byte{0, 0x83, 0, byte(len(body))}, body...))
}

func TestEnumerate(t *testing.T) {
	f := fakeTree{t, t.TempDir()}
	// nvme10 (PCIe, one namespace, not multipath) and nvme2 (TCP,
	// multipath: path devices nvme1c2n1 and nvme1c2n2 of heads nvme1n1, nvme1n2).
	f.file("sys/class/nvme/nvme10/model", "Vendor NVMe SSD 1TB         \n")
	f.file("sys/class/nvme/nvme10/serial", "S5GXNX0R123456  \n")
	f.file("sys/class/nvme/nvme10/firmware_rev", "2B2QEXM7\n")
	f.file("sys/class/nvme/nvme10/transport", "pcie\n")
	f.dir("sys/class/nvme/nvme10/nvme10n1")
	f.dir("sys/class/nvme/nvme10/power")
	f.file("sys/block/nvme10n1/nsid", "1\n")
	f.file("sys/block/nvme10n1/eui", "00 25 38 8b 71 b1 c3 e4\n")
	f.file("sys/block/nvme10n1/nguid", "00000000-0000-0000-0000-000000000000\n")

	f.file("sys/class/nvme/nvme2/model", "sedboot opalsim\n")
	f.file("sys/class/nvme/nvme2/serial", "SIM0002\n")
	f.file("sys/class/nvme/nvme2/firmware_rev", "1.0\n")
	f.file("sys/class/nvme/nvme2/transport", "tcp\n")
	f.dir("sys/class/nvme/nvme2/nvme1c2n2")
	f.dir("sys/class/nvme/nvme2/nvme1c2n1")
	f.file("sys/block/nvme1n1/nsid", "1\n")
	f.file("sys/block/nvme1n1/nguid", "e4d25c73-5a11-4fb1-8d2c-0123456789ab\n")
	f.file("sys/block/nvme1n2/nsid", "2\n")

	// sda: SATA; sdb: SAS; sr0-like device type 5 and a loop device are skipped.
	naa := []byte{0x50, 0x01, 0x4e, 0xe2, 0xb5, 0xd6, 0x7a, 0x90}
	f.file("sys/block/sda/device/type", "0\n")
	f.file("sys/block/sda/device/vendor", "ATA     \n")
	f.file("sys/block/sda/device/model", "Samsung SSD 870 \n")
	f.file("sys/block/sda/device/rev", "2B6Q\n")
	f.file("sys/block/sda/device/vpd_pg80", string(append([]byte{0, 0x80, 0, 8}, "S6PNNS0T"...)))
	f.file("sys/block/sda/device/vpd_pg83", vpd83(naa))
	f.file("sys/block/sdb/device/type", "0\n")
	f.file("sys/block/sdb/device/vendor", "SEAGATE \n")
	f.file("sys/block/sdb/device/model", "ST4000NM0295    \n")
	f.file("sys/block/sdb/device/rev", "DT31\n")
	f.file("sys/block/sdc/device/type", "5\n")
	f.dir("sys/block/loop0")

	got, err := Enumerate(context.Background(), f.root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range got {
		names = append(names, c.Name)
	}
	if strings.Join(names, ",") != "nvme2,nvme10,sda,sdb" {
		t.Fatalf("found %v", names)
	}
	n2, n10, sda, sdb := got[0], got[1], got[2], got[3]

	if n10.Kind != transport.KindNVMe || n10.Path != filepath.Join(f.root, "dev/nvme10") || n10.Model != "Vendor NVMe SSD 1TB" ||
		n10.Serial != "S5GXNX0R123456" || n10.Firmware != "2B2QEXM7" || n10.Transport != "pcie" {
		t.Errorf("nvme10: %+v", n10)
	}
	if len(n10.Namespaces) != 1 || n10.Namespaces[0].NSID != 1 || n10.Namespaces[0].NGUID != nil ||
		!bytes.Equal(n10.Namespaces[0].EUI64, []byte{0x00, 0x25, 0x38, 0x8b, 0x71, 0xb1, 0xc3, 0xe4}) {
		t.Errorf("nvme10 namespaces: %+v", n10.Namespaces)
	}
	want := []string{filepath.Join(f.root, "dev/nvme1n1"), filepath.Join(f.root, "dev/nvme1n2")}
	if n2.Transport != "tcp" || strings.Join(n2.BlockDevices, ",") != strings.Join(want, ",") {
		t.Errorf("nvme2: %+v", n2)
	}
	if ns := n2.Namespaces; len(ns) != 2 || ns[0].NSID != 1 || ns[1].NSID != 2 || len(ns[0].NGUID) != 16 || ns[0].NGUID[0] != 0xe4 {
		t.Errorf("nvme2 namespaces: %+v", ns)
	}
	if sda.Kind != transport.KindSATA || sda.Model != "Samsung SSD 870" || sda.Serial != "S6PNNS0T" || !bytes.Equal(sda.WWN, naa) ||
		sda.Path != filepath.Join(f.root, "dev/sda") || len(sda.BlockDevices) != 1 {
		t.Errorf("sda: %+v", sda)
	}
	if sdb.Kind != transport.KindSCSI || sdb.Model != "SEAGATE ST4000NM0295" || sdb.Firmware != "DT31" || sdb.WWN != nil {
		t.Errorf("sdb: %+v", sdb)
	}
}

func TestEnumerateEmptyAndBad(t *testing.T) {
	got, err := Enumerate(context.Background(), t.TempDir())
	if err != nil || len(got) != 0 {
		t.Fatalf("empty tree: %v, %v", got, err)
	}
	f := fakeTree{t, t.TempDir()}
	f.dir("sys/class/nvme/nvme0/nvme0n1")
	f.file("sys/block/nvme0n1/eui", "not hex\n")
	if _, err := Enumerate(context.Background(), f.root); err == nil || !strings.Contains(err.Error(), "nvme0n1/eui") {
		t.Fatalf("bad eui: %v", err)
	}
	g := fakeTree{t, t.TempDir()}
	g.file("sys/block/sda/device/type", "0\n")
	g.file("sys/block/sda/device/vpd_pg83", "\x00\x83\x00\x10\x01\x03")
	if _, err := Enumerate(context.Background(), g.root); err == nil || !strings.Contains(err.Error(), "vpd_pg83") {
		t.Fatalf("bad vpd_pg83: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Enumerate(ctx, f.root); err == nil {
		t.Fatal("cancelled context ignored")
	}
}

func TestNaturalCompare(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		less bool
	}{{"nvme2", "nvme10", true}, {"nvme10", "nvme2", false}, {"sda", "sdb", true}, {"nvme1n2", "nvme1n10", true}, {"sd", "sda", true}} {
		if got := naturalCompare(tc.a, tc.b) < 0; got != tc.less {
			t.Errorf("%s < %s = %v", tc.a, tc.b, got)
		}
	}
}
