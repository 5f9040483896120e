package kms_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/kms"
)

// benchKeys registers 24 keys on b for the benchmarks.
func benchKeys(tb testing.TB, b *backend) (*keySet, kms.Config) {
	tb.Helper()
	cfg := b.config(tb, "agent")
	c, err := kms.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	conn := b.connect(tb, c)
	return register(tb, conn, 24), cfg
}

// eachBenchBackend runs f as a sub-benchmark per server; a missing
// PyKMIP skips (or, under CI, fails) only its own part.
func eachBenchBackend(b *testing.B, f func(b *testing.B, be *backend)) {
	for _, x := range []struct {
		name string
		mk   func(testing.TB) *backend
	}{{"kmsd", kmsdBackend}, {"pykmip", pykmipBackend}} {
		b.Run("server="+x.name, func(b *testing.B) { f(b, x.mk(b)) })
	}
}

// coldClient is a new client, as at boot: no TLS session to resume.
func coldClient(tb testing.TB, cfg kms.Config) *kms.Client {
	c, err := kms.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// inMemory turns file paths into PEM so that building a client per
// iteration does not read files.
func inMemory(tb testing.TB, cfg kms.Config) kms.Config {
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			tb.Fatal(err)
		}
		return b
	}
	cfg.CAPEM, cfg.CertPEM, cfg.KeyPEM = read(cfg.CAFile), read(cfg.CertFile), read(cfg.KeyFile)
	cfg.CAFile, cfg.CertFile, cfg.KeyFile = "", "", ""
	return cfg
}

// BenchmarkFetch measures a boot's key fetch: a new client (no TLS
// session to resume), TCP, TLS, then the keys by name (Discover Versions,
// one batched Locate, one batched Get) or, in mode "ids", with the
// identifiers known and the KMIP version pinned (one batched Get that
// also checks the names). The proxy adds rtt/2 each way.
func BenchmarkFetch(b *testing.B) {
	eachBenchBackend(b, func(b *testing.B, be *backend) {
		ks, cfg := benchKeys(b, be)
		for _, rtt := range []time.Duration{0, 20 * time.Millisecond} {
			p := newProxy(b, be.addr, rtt)
			pcfg := inMemory(b, cfg)
			pcfg.Servers = []kms.Server{{Name: be.name, Address: p.addr(), ServerName: "127.0.0.1"}}
			for _, mode := range []string{"names", "ids"} {
				mcfg := pcfg
				if mode == "ids" {
					mcfg.Version = "1.4"
				}
				for _, n := range []int{1, 8, 24} {
					req := kms.FetchRequest{Group: ks.group}
					for i := range n {
						ref := kms.KeyRef{Name: ks.names[i]}
						if mode == "ids" {
							ref.IDs = map[string]string{be.name: ks.ids[i]}
						}
						req.Keys = append(req.Keys, ref)
					}
					b.Run(fmt.Sprintf("rtt=%s/mode=%s/keys=%d", rtt, mode, n), func(b *testing.B) {
						for b.Loop() {
							res, err := coldClient(b, mcfg).Fetch(context.Background(), req)
							if err != nil {
								b.Fatal(err)
							}
							res.Zero()
						}
					})
				}
			}
		}
	})
}

// BenchmarkFetchRatio reports fetch(24)/fetch(1), each a cold fetch by
// name, alternated so that both see the same conditions.
func BenchmarkFetchRatio(b *testing.B) {
	eachBenchBackend(b, func(b *testing.B, be *backend) {
		ks, cfg := benchKeys(b, be)
		for _, rtt := range []time.Duration{0, 20 * time.Millisecond} {
			p := newProxy(b, be.addr, rtt)
			pcfg := inMemory(b, cfg)
			pcfg.Servers = []kms.Server{{Name: be.name, Address: p.addr(), ServerName: "127.0.0.1"}}
			one := kms.FetchRequest{Group: ks.group, Keys: ks.refs()[:1]}
			all := kms.FetchRequest{Group: ks.group, Keys: ks.refs()}
			b.Run(fmt.Sprintf("rtt=%s", rtt), func(b *testing.B) {
				var t1, t24 time.Duration
				for b.Loop() {
					for _, r := range []struct {
						req *kms.FetchRequest
						acc *time.Duration
					}{{&one, &t1}, {&all, &t24}} {
						start := time.Now()
						res, err := coldClient(b, pcfg).Fetch(context.Background(), *r.req)
						if err != nil {
							b.Fatal(err)
						}
						*r.acc += time.Since(start)
						res.Zero()
					}
				}
				b.ReportMetric(float64(t24)/float64(t1), "fetch24/fetch1")
				b.ReportMetric(float64(t1.Milliseconds())/float64(b.N), "ms/fetch1")
				b.ReportMetric(float64(t24.Milliseconds())/float64(b.N), "ms/fetch24")
			})
		}
	})
}

// BenchmarkGet measures single-key Get latency and throughput on one
// open connection from the same client against each server, and with
// four connections in parallel.
func BenchmarkGet(b *testing.B) {
	eachBenchBackend(b, func(b *testing.B, be *backend) {
		ks, cfg := benchKeys(b, be)
		c := coldClient(b, cfg)
		getOne := func(conn *kms.Conn, i int) error {
			secs, errs, err := conn.GetSecrets(context.Background(), ks.ids[i%len(ks.ids):i%len(ks.ids)+1])
			if err != nil {
				return err
			}
			if errs[0] != nil {
				return errs[0]
			}
			secs[0].Zero()
			return nil
		}
		b.Run("conns=1", func(b *testing.B) {
			conn := be.connect(b, c)
			start := time.Now()
			i := 0
			for b.Loop() {
				if err := getOne(conn, i); err != nil {
					b.Fatal(err)
				}
				i++
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "gets/s")
		})
		b.Run("conns=4", func(b *testing.B) {
			const n = 4
			conns := make([]*kms.Conn, n)
			for i := range conns {
				conns[i] = be.connect(b, c)
			}
			per := b.N/n + 1
			errs := make(chan error, n)
			b.ResetTimer()
			start := time.Now()
			for _, conn := range conns {
				go func() {
					for i := range per {
						if err := getOne(conn, i); err != nil {
							errs <- err
							return
						}
					}
					errs <- nil
				}()
			}
			for range n {
				if err := <-errs; err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(per*n)/time.Since(start).Seconds(), "gets/s")
		})
	})
}
