package nvmeof

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	subNQN  = "nqn.2024-01.io.sedboot:array-0001:ssd-0"
	hostNQN = "nqn.2014-08.org.nvmexpress:uuid:8e1f3a6c-0d2b-4c55-9a1e-2f0b7c9d4e61"
	hostID  = "8E1F3A6C-0D2B-4C55-9A1E-2F0B7C9D4E61"
)

func TestOptions(t *testing.T) {
	tests := []struct {
		name string
		t    Target
		want string
	}{
		{"minimal", Target{Address: "192.0.2.7", NQN: subNQN},
			"transport=tcp,traddr=192.0.2.7,trsvcid=4420,nqn=" + subNQN},
		{"full", Target{Transport: "tcp", Address: "192.0.2.7", Port: 4421, NQN: subNQN, HostNQN: hostNQN, HostID: hostID,
			HostAddress: "192.0.2.2", HostIface: "eth0", NrIOQueues: 2, CtrlLossTmo: 30, KeepAliveTmo: 5, ReconnectDelay: 2},
			"transport=tcp,traddr=192.0.2.7,trsvcid=4421,nqn=" + subNQN + ",hostnqn=" + hostNQN +
				",hostid=8e1f3a6c-0d2b-4c55-9a1e-2f0b7c9d4e61,host_traddr=192.0.2.2,host_iface=eth0,nr_io_queues=2,ctrl_loss_tmo=30,keep_alive_tmo=5,reconnect_delay=2"},
		{"reconnect forever", Target{Address: "2001:db8::7", NQN: subNQN, CtrlLossTmo: -1},
			"transport=tcp,traddr=2001:db8::7,trsvcid=4420,nqn=" + subNQN + ",ctrl_loss_tmo=-1"},
		{"discovery: port 8009, no I/O queues", Target{Address: "127.0.0.1", NQN: DiscoveryNQN, NrIOQueues: 4, HostNQN: hostNQN},
			"transport=tcp,traddr=127.0.0.1,trsvcid=8009,nqn=" + DiscoveryNQN + ",hostnqn=" + hostNQN},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.t.Options()
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("Options() =\n %s\nwant\n %s", got, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	good := Target{Address: "192.0.2.7", NQN: subNQN}
	tests := []struct {
		name   string
		mutate func(*Target)
		fields []string
	}{
		{"hostname", func(t *Target) { t.Address = "storage.example" }, []string{"address"}},
		{"zone", func(t *Target) { t.Address = "fe80::1%eth0" }, []string{"address"}},
		{"transport", func(t *Target) { t.Transport = "fc" }, []string{"transport"}},
		{"port", func(t *Target) { t.Port = 70000 }, []string{"port"}},
		{"no nqn", func(t *Target) { t.NQN = "" }, []string{"nqn"}},
		{"nqn prefix", func(t *Target) { t.NQN = "iqn.2024-01.io.sedboot:x" }, []string{"nqn"}},
		{"option injection", func(t *Target) { t.NQN = subNQN + ",traddr=198.51.100.1" }, []string{"nqn"}},
		{"space", func(t *Target) { t.HostNQN = "nqn.2024-01.io.sedboot: host" }, []string{"host_nqn"}},
		{"long nqn", func(t *Target) { t.NQN = "nqn." + strings.Repeat("a", maxNQN-3) }, []string{"nqn"}},
		{"longest nqn ok", func(t *Target) { t.NQN = "nqn." + strings.Repeat("a", maxNQN-4) }, nil},
		{"host id", func(t *Target) { t.HostID = "not-a-uuid" }, []string{"host_id"}},
		{"host address", func(t *Target) { t.HostAddress = "eth0" }, []string{"host_address"}},
		{"host iface", func(t *Target) { t.HostIface = "eth0,x" }, []string{"host_iface"}},
		{"numbers", func(t *Target) { t.NrIOQueues, t.CtrlLossTmo, t.KeepAliveTmo, t.ReconnectDelay = -1, -2, -1, -1 },
			[]string{"nr_io_queues", "ctrl_loss_tmo", "keep_alive_tmo", "reconnect_delay"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tg := good
			tc.mutate(&tg)
			err := tg.Validate()
			var got []string
			if err != nil {
				for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
					var te *TargetError
					if !errors.As(e, &te) || !strings.Contains(e.Error(), te.Field) {
						t.Fatalf("error %v is not a *TargetError naming its field", e)
					}
					got = append(got, te.Field)
				}
				if _, oerr := tg.Options(); oerr == nil {
					t.Error("Options() built a string for an invalid target")
				}
			}
			if strings.Join(got, " ") != strings.Join(tc.fields, " ") {
				t.Errorf("Validate() fields = %v, want %v (%v)", got, tc.fields, err)
			}
		})
	}
}

func TestParseConnectResponse(t *testing.T) {
	tests := []struct {
		in      string
		want    Controller
		wantErr string
	}{
		{"instance=3,cntlid=1\n", Controller{Name: "nvme3", Instance: 3, CntlID: 1}, ""},
		{"cntlid=65535,instance=12", Controller{Name: "nvme12", Instance: 12, CntlID: 65535}, ""},
		{"instance=-1,cntlid=-1,transport=%s,traddr=%s,trsvcid=%s\n", Controller{}, "no controller instance"},
		{"instance=2\n", Controller{}, "want instance=N,cntlid=M"},
		{"", Controller{}, "want instance=N,cntlid=M"},
		{"instance=x,cntlid=1", Controller{}, "no controller instance"},
		{"instance=1,cntlid=70000", Controller{}, "bad cntlid"},
	}
	for _, tc := range tests {
		got, err := ParseConnectResponse(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseConnectResponse(%q) error = %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseConnectResponse(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

// discPage builds a discovery log page as the NVMe base specification
// lays it out (figures "Discovery Log Page" and "Discovery Log Page
// Entry"), independently of the parser's constants.
func discPage(genctr uint64, entries []LogEntry, pad func(string, int) []byte) []byte {
	b := make([]byte, 1024+1024*len(entries))
	binary.LittleEndian.PutUint64(b[0:], genctr)
	binary.LittleEndian.PutUint64(b[8:], uint64(len(entries)))
	binary.LittleEndian.PutUint16(b[16:], 0) // RECFMT
	for i, e := range entries {
		d := b[1024*(i+1):]
		d[0], d[1], d[2], d[3] = e.TransportType, e.AddressFamily, e.SubsystemType, e.TREQ
		binary.LittleEndian.PutUint16(d[4:], e.PortID)
		binary.LittleEndian.PutUint16(d[6:], e.CntlID)
		binary.LittleEndian.PutUint16(d[8:], e.ASQSZ)
		binary.LittleEndian.PutUint16(d[10:], e.EFlags)
		copy(d[32:64], pad(e.TrSvcID, 32))
		copy(d[256:512], pad(e.SubNQN, 256))
		copy(d[512:768], pad(e.TrAddr, 256))
		d[768] = e.TCPSecType
	}
	return b
}

func spacePad(s string, n int) []byte { return []byte(s + strings.Repeat(" ", n-len(s))) }
func nulPad(s string, n int) []byte   { return append([]byte(s), make([]byte, n-len(s))...) }

func TestParseDiscoveryLog(t *testing.T) {
	want := []LogEntry{
		{TransportType: 3, AddressFamily: 1, SubsystemType: 2, TREQ: 2, PortID: 1, CntlID: 0xffff, ASQSZ: 32,
			TrSvcID: "4420", SubNQN: subNQN, TrAddr: "192.0.2.7", TCPSecType: 0},
		{TransportType: 3, AddressFamily: 1, SubsystemType: 3, PortID: 1, CntlID: 0xffff, ASQSZ: 32, EFlags: 0x3,
			TrSvcID: "8009", SubNQN: DiscoveryNQN, TrAddr: "192.0.2.7", TCPSecType: 2},
		{TransportType: 1, AddressFamily: 2, SubsystemType: 2, PortID: 7, CntlID: 5,
			TrSvcID: "4420", SubNQN: subNQN + ":rdma", TrAddr: "2001:db8::7"},
	}
	for name, pad := range map[string]func(string, int) []byte{"space padded": spacePad, "NUL padded": nulPad} {
		t.Run(name, func(t *testing.T) {
			gen, got, err := ParseDiscoveryLog(discPage(42, want, pad))
			if err != nil {
				t.Fatal(err)
			}
			want := append([]LogEntry(nil), want...)
			want[2].TCPSecType = 0 // only TCP entries carry a security type
			if gen != 42 || !reflect.DeepEqual(got, want) {
				t.Errorf("ParseDiscoveryLog = %d,\n%+v\nwant 42,\n%+v", gen, got, want)
			}
		})
	}

	page := discPage(1, want, spacePad)
	for _, tc := range []struct {
		name string
		b    []byte
		err  string
	}{
		{"short header", page[:100], "shorter than its 1024-byte header"},
		{"truncated entries", page[:1024+1024+10], "has 3 records but only"},
		{"absurd count", func() []byte {
			b := append([]byte(nil), page[:1024]...)
			binary.LittleEndian.PutUint64(b[8:], 1<<40)
			return b
		}(), "claims 1099511627776 records"},
	} {
		if _, _, err := ParseDiscoveryLog(tc.b); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.err)
		}
	}
	if gen, got, err := ParseDiscoveryLog(discPage(9, nil, spacePad)); err != nil || gen != 9 || len(got) != 0 {
		t.Errorf("empty log: %d %v %v", gen, got, err)
	}
}

func TestLogEntryTarget(t *testing.T) {
	base := Target{HostNQN: hostNQN, HostID: hostID, CtrlLossTmo: 30, Address: "127.0.0.1", NQN: DiscoveryNQN}
	e := LogEntry{TransportType: 3, AddressFamily: 1, SubsystemType: 2, TrSvcID: "4420", SubNQN: subNQN, TrAddr: "192.0.2.7"}
	got, err := e.Target(base)
	if err != nil {
		t.Fatal(err)
	}
	want := Target{Transport: "tcp", Address: "192.0.2.7", Port: 4420, NQN: subNQN, HostNQN: hostNQN, HostID: hostID, CtrlLossTmo: 30}
	if got != want {
		t.Errorf("Target() = %+v, want %+v", got, want)
	}
	if !e.IsNVMSubsystem() || e.Transport() != "tcp" {
		t.Errorf("IsNVMSubsystem/Transport = %v/%s", e.IsNVMSubsystem(), e.Transport())
	}
	e.TrSvcID = "iscsi"
	if _, err := e.Target(base); err == nil || !strings.Contains(err.Error(), `"iscsi"`) {
		t.Errorf("Target() with a bad service id: %v", err)
	}
	e.TrSvcID, e.TrAddr = "4420", "not-an-ip"
	if _, err := e.Target(base); err == nil {
		t.Error("Target() with a bad address succeeded")
	}
}

func TestGetLogPageCommand(t *testing.T) {
	if s := unsafe.Sizeof(passthruCmd{}); s != 72 {
		t.Fatalf("passthruCmd is %d bytes, struct nvme_passthru_cmd is 72", s)
	}
	for _, tc := range []struct {
		off                        uint64
		n                          uint32
		cdw10, cdw11, cdw12, cdw13 uint32
	}{
		{0, 1024, 0x70 | 255<<16, 0, 0, 0},
		{4096, 4096, 0x70 | 1023<<16, 0, 4096, 0},
		{1 << 32, 512 << 10, 0x70 | 0xffff<<16, 1, 0, 1},
	} {
		c := getLogPageCmd(0x70, tc.off, tc.n, 0x1000)
		if c.Opcode != 0x02 || c.DataLen != tc.n || c.Addr != 0x1000 || c.Cdw10 != tc.cdw10 || c.Cdw11 != tc.cdw11 ||
			c.Cdw12 != tc.cdw12 || c.Cdw13 != tc.cdw13 || c.TimeoutMs == 0 {
			t.Errorf("getLogPageCmd(off %d, n %d) = %+v", tc.off, tc.n, c)
		}
	}
	if nvmeIoctlAdminCmd != (3<<30 | 72<<16 | 'N'<<8 | 0x41) { // _IOWR on x86-64 and arm64
		t.Errorf("NVME_IOCTL_ADMIN_CMD = %#x", nvmeIoctlAdminCmd)
	}
}

// TestGetLogNotNVMe sends the real ioctl to a device that is not an NVMe
// controller: the error must say which log page failed.
func TestGetLogNotNVMe(t *testing.T) {
	f, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = getLog(context.Background(), int(f.Fd()), 0x70, 1024)
	if !errors.Is(err, unix.ENOTTY) || !strings.Contains(err.Error(), "get log page 0x70") {
		t.Errorf("getLog(/dev/null) error = %v, want ENOTTY naming the log page", err)
	}
	if _, err := getLog(context.Background(), int(f.Fd()), 0x70, 1022); err == nil {
		t.Error("getLog with a length that is not a multiple of 4 succeeded")
	}
}

func TestNamespaceDevices(t *testing.T) {
	tests := []struct {
		entries []string
		want    []string
	}{
		{[]string{"address", "cntlid", "nvme1n1", "nvme1n2", "power", "subsysnqn"}, []string{"nvme1n1", "nvme1n2"}},
		{[]string{"nvme0c2n10", "nvme0c2n2", "nvme0c2n1", "delete_controller"}, []string{"nvme0n1", "nvme0n2", "nvme0n10"}},
		{[]string{"nvme-subsys0", "nvme1", "nvme1n1p1", "ng1n1", "hwmon2"}, nil},
		{nil, nil},
	}
	for _, tc := range tests {
		if got := NamespaceDevices(tc.entries); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("NamespaceDevices(%v) = %v, want %v", tc.entries, got, tc.want)
		}
	}
}

func TestParseAddressAttr(t *testing.T) {
	got := ParseAddressAttr("traddr=192.0.2.7,trsvcid=4420,src_addr=192.0.2.2\n")
	want := map[string]string{"traddr": "192.0.2.7", "trsvcid": "4420", "src_addr": "192.0.2.2"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseAddressAttr = %v", got)
	}
}

// sysfsController lays out a directory the way /sys/class/nvme/<name>
// looks for a fabrics controller.
func sysfsController(t *testing.T, class, name string, attrs map[string]string) {
	t.Helper()
	dir := filepath.Join(class, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for k, v := range attrs {
		if err := os.WriteFile(filepath.Join(dir, k), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFindController(t *testing.T) {
	class := t.TempDir()
	sysfsController(t, class, "nvme0", map[string]string{"transport": "pcie", "subsysnqn": "nqn.2019-08.org.qemu:deadbeef", "address": "0000:00:04.0"})
	sysfsController(t, class, "nvme1", map[string]string{"transport": "tcp", "subsysnqn": subNQN, "address": "traddr=192.0.2.7,trsvcid=4421", "cntlid": "1"})
	sysfsController(t, class, "nvme2", map[string]string{"transport": "tcp", "subsysnqn": subNQN, "address": "traddr=192.0.2.7,trsvcid=4420,src_addr=192.0.2.2", "cntlid": "7"})
	h := &Host{SysClass: class}
	c, ok, err := h.FindController(Target{Address: "192.0.2.7", NQN: subNQN})
	if err != nil || !ok || c != (Controller{Name: "nvme2", Instance: 2, CntlID: 7}) {
		t.Errorf("FindController = %+v, %v, %v; want nvme2", c, ok, err)
	}
	if _, ok, err := h.FindController(Target{Address: "192.0.2.8", NQN: subNQN}); ok || err != nil {
		t.Errorf("FindController(other address) = %v, %v", ok, err)
	}
	h2 := &Host{SysClass: filepath.Join(class, "absent")}
	if _, ok, err := h2.FindController(Target{Address: "192.0.2.7", NQN: subNQN}); ok || err != nil {
		t.Errorf("FindController without the class directory = %v, %v", ok, err)
	}
}

func TestDisconnectRejectsBadNames(t *testing.T) {
	h := &Host{SysClass: t.TempDir()}
	for _, name := range []string{"", "nvme", "nvme1n1", "../nvme1", "nvme1/../x"} {
		if err := h.Disconnect(context.Background(), Controller{Name: name}); err == nil || !strings.Contains(err.Error(), "not a controller name") {
			t.Errorf("Disconnect(%q) = %v", name, err)
		}
	}
	if err := h.Disconnect(context.Background(), Controller{Name: "nvme9"}); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "nvme9") {
		t.Errorf("Disconnect(absent nvme9) = %v, want not-exist naming nvme9", err)
	}
}

// TestConnectWithoutFabricsDriver: without /dev/nvme-fabrics (module not
// loaded) Connect waits only as long as ctx allows and says what is
// missing.
func TestConnectWithoutFabricsDriver(t *testing.T) {
	h := &Host{FabricsDev: filepath.Join(t.TempDir(), "nvme-fabrics")}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := h.Connect(ctx, Target{Address: "127.0.0.1", NQN: subNQN})
	if err == nil || !strings.Contains(err.Error(), "fabrics driver not ready") || !strings.Contains(err.Error(), "127.0.0.1:4420") {
		t.Errorf("Connect without the driver: %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("Connect took %v with a 100ms deadline", el)
	}
	if _, err := h.Connect(ctx, Target{Address: "localhost", NQN: subNQN}); err == nil || !strings.Contains(err.Error(), "address") {
		t.Errorf("Connect with an invalid target: %v", err)
	}
}
