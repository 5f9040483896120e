package boottest

import (
	"reflect"
	"testing"
)

func TestEchoedKernelLog(t *testing.T) {
	console := "[    1.0] nvme nvme0: not echoed\r\n" +
		"SEDBOOT-TEST kmsg: nvme nvme0: new ctrl: NQN \"a:b\", addr 10.0.2.100:4420\r\n" +
		"SEDBOOT-TEST connected a:b\r\n" +
		"noise SEDBOOT-TEST kmsg-after: nvme nvme0: Reconnecting in 1 seconds...\n" +
		"SEDBOOT-TEST kmsg-after without a colon\n"
	want := []KernelRecord{
		{"kmsg", `nvme nvme0: new ctrl: NQN "a:b", addr 10.0.2.100:4420`},
		{"kmsg-after", "nvme nvme0: Reconnecting in 1 seconds..."},
	}
	if got := EchoedKernelLog(console); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	if !NVMeReconnect.MatchString(want[1].Msg) || NVMeTrouble.MatchString(want[0].Msg) {
		t.Fatal("the NVMe/TCP message patterns misjudge plain messages")
	}
}
