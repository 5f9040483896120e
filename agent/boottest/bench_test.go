package boottest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sedboot/sedboot/images/rig"
	"github.com/sedboot/sedboot/initramfs"
	"github.com/sedboot/sedboot/internal/delayproxy"
)

// BenchmarkBoot measures the agent from its start to switch_root, as the
// boot record says, with 4 and 24 SEDs and the key server at 0 and 20 ms
// round-trip time (a delay proxy on 127.0.0.1). Metrics: agent-ms (start to
// switch_root), keys-ms and unlock-ms (those steps), boot-ms (QEMU start to
// the real OS's first line). Run with -benchtime=1x: each iteration sets up
// a new array and boots a guest.
func BenchmarkBoot(b *testing.B) {
	for _, drives := range []int{4, 24} {
		for _, rtt := range []time.Duration{0, 20 * time.Millisecond} {
			b.Run(fmt.Sprintf("drives=%d/rtt=%s", drives, rtt), func(b *testing.B) {
				var agent, keys, unlock, boot time.Duration
				for range b.N {
					b.StopTimer()
					a := newArray(b, drives, true)
					kmip := map[string]string{rig.GuestHost: a.KMSD.Addr}
					if rtt > 0 {
						p, err := delayproxy.Start(a.KMSD.Addr, delayproxy.Options{Delay: rtt / 2})
						if err != nil {
							b.Fatal(err)
						}
						b.Cleanup(p.Close)
						kmip[rig.GuestHost] = p.Addr
					}
					b.StartTimer()
					m := a.boot(fmt.Sprintf("bench-%d-%d", drives, rtt.Milliseconds()), a.doc(nil), nil, kmip)
					rec, hello := realOSAt(b, m, 1)
					boot += hello.Sub(m.Started())
					checkRecord(b, rec, drives)
					agent += time.Duration(rec["total_ns"].(float64))
					for _, s := range rec["steps"].([]any) {
						sm := s.(map[string]any)
						d := time.Duration(sm["duration_ns"].(float64))
						switch sm["name"] {
						case "keys":
							keys += d
						case "unlock":
							unlock += d
						}
					}
				}
				n := float64(b.N)
				b.ReportMetric(float64(agent.Milliseconds())/n, "agent-ms")
				b.ReportMetric(float64(keys.Milliseconds())/n, "keys-ms")
				b.ReportMetric(float64(unlock.Milliseconds())/n, "unlock-ms")
				b.ReportMetric(float64(boot.Milliseconds())/n, "boot-ms")
			})
		}
	}
}

// BenchmarkInitramfsSize builds the production initramfs with zstd -19
// and reports its size.
func BenchmarkInitramfsSize(b *testing.B) {
	p := prod.Setup(b)
	for range b.N {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		img, err := initramfs.BuildProduction(ctx, p.Kernel, initramfs.Spec{Level: 19})
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(img.Size), "bytes-zstd19")
		b.ReportMetric(float64(img.RawSize), "bytes-cpio")
	}
}
