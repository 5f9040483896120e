package fabrictest

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sedboot/sedboot/images/boottest"
	"github.com/sedboot/sedboot/images/guest"
)

// metricLine is how the guest reports a figure.
var metricLine = regexp.MustCompile(guest.Marker + ` metric (\S+) ([0-9.]+)`)

// BenchmarkFabric boots one guest per iteration against one simulated SED
// (enabled and locked by the host before the boot) and reports, as the
// guest sees them:
//
//   - boot-ms: QEMU start to the test init's first line;
//   - init-uptime-ms: the guest kernel's uptime when init started;
//   - connect-ms: connecting the controller and waiting for its namespace;
//   - admin-rt-ms: one admin command's round trip (median of 20 Level 0
//     discoveries, 2 KiB security receives);
//   - unlock-first-ms, unlock-ms: sed.Unlock over the wire, the first one
//     and the median of four more after sed.Lock;
//   - write-MB/s, read-MB/s: sequential O_DIRECT I/O of 64 MiB in 1 MiB
//     blocks, one at a time (AES-XTS in the simulator included).
//
// Run it with -benchtime=1x; each iteration takes about 20 s.
func BenchmarkFabric(b *testing.B) {
	k, img := setup(b)
	sums := map[string]float64{}
	var order []string
	for range b.N {
		b.StopTimer()
		sim := startSim(b, 1, 128<<20)
		keys := newKeys(b)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		enable(ctx, b, sim, 0, keys)
		if err := sim.PowerCycle(ctx, 0); err != nil {
			b.Fatal(err)
		}
		cancel()
		b.StartTimer()
		m := boottest.Boot(b, guestConfig(k, img, "fabric-bench", sim, []string{sim.NQN(0)}, keys.admin1,
			"sedboot.scenario=bench", "sedboot.mib=64", "sedboot.bs=1024", "sedboot.unlocks=5"))
		boottest.WaitFor(b, m, guest.Started)
		add := func(name string, v float64) {
			if _, ok := sums[name]; !ok {
				order = append(order, name)
			}
			sums[name] += v
		}
		add("boot-ms", float64(time.Since(m.Started()).Milliseconds()))
		boottest.WaitFor(b, m, guest.Passed)
		b.StopTimer()
		for _, mm := range metricLine.FindAllStringSubmatch(m.ConsoleText(), -1) {
			v, err := strconv.ParseFloat(mm[2], 64)
			if err != nil {
				b.Fatalf("metric %s: %v", mm[1], err)
			}
			add(mm[1], v)
		}
		if testing.Verbose() {
			for _, line := range strings.Split(m.ConsoleText(), "\n") {
				if strings.Contains(line, guest.Marker) && !strings.Contains(line, " kmsg") {
					b.Log(strings.TrimSpace(line))
				}
			}
		}
		if e := boottest.WaitExit(b, m); !e.Clean() {
			b.Fatalf("guest did not power off cleanly: %s", e)
		}
		b.StartTimer()
	}
	for _, name := range order {
		b.ReportMetric(sums[name]/float64(b.N), name)
	}
}
