package lifecycle

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkRotate rotates an array of 4 and of 24 drives (one kmsd), with
// the key server on loopback and 20 ms away. Each operation is a whole
// rotation: register the new generation, change and verify every drive
// (canary first, then 8 at a time), deactivate the old generation and
// destroy the one before it. Besides ns/op it reports the KMIP requests
// (round trips) and TLS connections per rotation.
func BenchmarkRotate(b *testing.B) {
	for _, drives := range []int{4, 24} {
		for _, rtt := range []time.Duration{0, 20 * time.Millisecond} {
			b.Run(fmt.Sprintf("drives=%d/rtt=%s", drives, rtt), func(b *testing.B) {
				ctx := testCtx(b)
				r := newRig(b, rigOptions{drives: drives, servers: 1, rtt: rtt})
				r.enable(ctx)
				var reqs, conns int
				b.ResetTimer()
				for b.Loop() {
					a := r.open()
					res, err := a.Rotate(ctx, RotateOptions{DestroyAfter: 0})
					if err != nil {
						b.Fatal(err)
					}
					reqs += res.KMS.Requests
					conns += res.KMS.Connections
				}
				b.ReportMetric(float64(reqs)/float64(b.N), "kmip-requests/op")
				b.ReportMetric(float64(conns)/float64(b.N), "tls-connections/op")
			})
		}
	}
}
