package nvmetcp

import (
	"fmt"
	"testing"

	"github.com/sedboot/sedboot/internal/blockdev"
	"github.com/sedboot/sedboot/internal/opalsim"
)

// BenchmarkSequential measures sequential read and write throughput
// through the loopback test initiator (one queue, one command at a time),
// against an in-memory device (transport cost) and an opalsim drive
// (transport plus AES-XTS media encryption).
func BenchmarkSequential(b *testing.B) {
	const blocks = 64 << 11 // 64 MiB of 512-byte blocks
	for _, backing := range []string{"mem", "opalsim"} {
		for _, dg := range []hostOpts{{}, {hdgst: true, ddgst: true}} {
			for _, size := range []int{128 << 10, 1 << 20} {
				for _, op := range []string{"write", "read"} {
					name := fmt.Sprintf("%s/%s/digests=%v/%dKiB", backing, op, dg.ddgst, size>>10)
					b.Run(name, func(b *testing.B) {
						var dev blockdev.Device
						if backing == "mem" {
							dev = newMemDevice("BENCH", 512, blocks)
						} else {
							d, err := opalsim.NewMemory(opalsim.Config{Serial: "BENCH", Model: "bench", Firmware: "B1", Blocks: blocks,
								MBRSize: 1 << 20, DataStoreSize: 64 << 10})
							if err != nil {
								b.Fatal(err)
							}
							b.Cleanup(func() { d.Close() })
							dev = d
						}
						_, addr := startTarget(b, Options{}, map[string]blockdev.Device{nqnA: dev})
						s := openSession(b, addr, nqnA, dg)
						data := randBytes(size)
						nlb := size / 512
						span := blocks / nlb
						if op == "read" {
							for i := range span {
								s.write(b, uint64(i*nlb), data, 512)
							}
						}
						b.SetBytes(int64(size))
						b.ResetTimer()
						for i := 0; b.Loop(); i++ {
							lba := uint64((i % span) * nlb)
							if op == "write" {
								if r := s.write(b, lba, data, 512); r.status != 0 {
									b.Fatalf("write: %#x", r.status)
								}
							} else if r, _ := s.read(b, lba, size, 512); r.status != 0 {
								b.Fatalf("read: %#x", r.status)
							}
						}
					})
				}
			}
		}
	}
}
