package modload

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseOrder(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string
		wantErr string
	}{
		{"empty", "", nil, ""},
		{"two with blank and comment", "# generated\n/lib/modules/v/a.ko\n\n/lib/modules/v/b.ko\n",
			[]string{"/lib/modules/v/a.ko", "/lib/modules/v/b.ko"}, ""},
		{"relative path", "lib/a.ko\n", nil, `line 1: "lib/a.ko"`},
		{"compressed", "/lib/a.ko\n/lib/b.ko.xz\n", nil, "line 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseOrder([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseOrder = %v, %v; want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("parseOrder = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

// Loading real modules needs a kernel that accepts them (the QEMU boot test
// does that); here the failure paths are checked without privileges.
func TestLoadNamesTheFailingModule(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, filepath.Dir(OrderFile)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, OrderFile), []byte("/lib/modules/x/missing.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	done, err := Load(context.Background(), root)
	if err == nil || !strings.Contains(err.Error(), "module missing") || len(done) != 0 {
		t.Fatalf("Load = %v, %v; want an error naming module missing", done, err)
	}
	if _, err := Load(context.Background(), t.TempDir()); err == nil {
		t.Fatal("Load without an order file succeeded")
	}
}
