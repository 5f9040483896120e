package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sample = `goos: linux
goarch: amd64
pkg: github.com/sedboot/sedboot/internal/opalsim
cpu: AMD EPYC 7B13
BenchmarkUnlock-2   	     200	   5912345 ns/op
BenchmarkMediaWrite-2	      50	  7654321 ns/op	 137.00 MB/s	  12 allocs/op
PASS
pkg: github.com/sedboot/sedboot/internal/kms
BenchmarkFetch/rtt=20ms/keys=24-2  	 10	 41000000 ns/op	 1.05 ratio
garbage line
`

func TestParseRenderUpdate(t *testing.T) {
	rs, cpu, err := parse(strings.NewReader(sample))
	if err != nil || len(rs) != 3 || cpu != "AMD EPYC 7B13" {
		t.Fatalf("parse: %d results, cpu %q, err %v", len(rs), cpu, err)
	}
	if rs[1].metrics[1] != [2]string{"137.00", "MB/s"} || rs[2].pkg != "github.com/sedboot/sedboot/internal/kms" {
		t.Fatalf("parse: %+v", rs)
	}
	doc := filepath.Join(t.TempDir(), "b.md")
	os.WriteFile(doc, []byte("# B\n\nintro\n"+begin+"\nold\n"+end+"\n\noutro\n"), 0o644)
	if err := update(doc, render(rs, cpu)); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(doc)
	s := string(got)
	for _, want := range []string{"intro", "outro", "| internal/opalsim | MediaWrite-2 | 50 | 7654321 ns/op, 137.00 MB/s, 12 allocs/op |", "Fetch/rtt=20ms/keys=24-2"} {
		if !strings.Contains(s, want) {
			t.Errorf("document lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "\nold\n") {
		t.Error("old table kept")
	}
	os.WriteFile(doc, []byte("no markers"), 0o644)
	if err := update(doc, "x"); err == nil {
		t.Error("update accepted a document without markers")
	}
}
