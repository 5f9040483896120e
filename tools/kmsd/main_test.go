package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/pki"
	"github.com/sedboot/sedboot/internal/secret"
)

func TestInitServeAndStop(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "kms")
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"init", "--dir", dir, "--listen", "127.0.0.1:0"}, &out, &errb); code != exitOK {
		t.Fatalf("init: exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "kmsd serve --config") {
		t.Errorf("init output lacks the next step: %s", out.String())
	}
	for _, f := range []string{"master.key", "pki/ca.key", "pki/server.key", "pki/agent.key", "pki/admin.key", "pki/peer.key", "kmsd.json"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	// A second init into the same directory refuses.
	if code := run(context.Background(), []string{"init", "--dir", dir}, io.Discard, io.Discard); code == exitOK {
		t.Error("second init succeeded")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	var wg sync.WaitGroup
	wg.Add(1)
	code := -1
	go func() {
		defer wg.Done()
		code = run(ctx, []string{"serve", "--config", filepath.Join(dir, "kmsd.json")}, io.Discard, pw)
		pw.Close()
	}()
	addr := make(chan string, 1)
	var logs bytes.Buffer
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			logs.WriteString(sc.Text() + "\n")
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "listening" {
				addr <- rec["addr"].(string)
			}
		}
	}()
	var a string
	select {
	case a = <-addr:
	case <-time.After(10 * time.Second):
		cancel()
		wg.Wait()
		t.Fatalf("kmsd did not start (exit %d)", code)
	}

	client := func(name string) *kms.Conn {
		c, err := kms.New(kms.Config{Servers: []kms.Server{{Address: a}},
			CAFile: filepath.Join(dir, "pki/ca.crt"), CertFile: filepath.Join(dir, "pki", name+".crt"), KeyFile: filepath.Join(dir, "pki", name+".key")})
		if err != nil {
			t.Fatal(err)
		}
		conn, err := c.Connect(context.Background(), c.Servers()[0])
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}
	agent, admin, peer := client("agent"), client("admin"), client("peer")
	v, _ := secret.Random(32)
	defer v.Zero()
	id, _, err := agent.Register(context.Background(), kms.SecretSpec{Name: "sedboot-SN1--x--key-gen-1", Group: "sedboot-SN1", Value: v, Activate: true})
	if err != nil {
		t.Fatal(err)
	}
	// The peer reads through the group grant from the generated policy;
	// the administrator locks the key for everyone.
	secs, errs, err := peer.GetSecrets(context.Background(), []string{id})
	if err != nil || errs[0] != nil || !secs[0].Equal(v) {
		t.Fatalf("peer Get: %v %v", errs, err)
	}
	secs[0].Zero()
	if err := admin.SetExtractable(context.Background(), id, false); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*kms.Conn{agent, peer} {
		if _, errs, _ := c.GetSecrets(context.Background(), []string{id}); errs == nil || errs[0] == nil {
			t.Error("Get of a locked key succeeded")
		}
		c.Close()
	}
	admin.Close()

	cancel() // as SIGTERM would
	wg.Wait()
	if code != exitOK {
		t.Fatalf("serve exit %d; logs:\n%s", code, logs.String())
	}
	audit, err := os.ReadFile(filepath.Join(dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(audit, []byte(`"identity":"sedboot-agent"`)) || bytes.Contains(audit, v.Bytes()) {
		t.Errorf("audit log missing the agent or holding key material")
	}
}

func TestBadConfigurations(t *testing.T) {
	dir := t.TempDir()
	ca, _ := pki.NewCA("x", pki.ECDSAP256)
	caFile, caKey, _ := ca.WriteFiles(dir, "ca")
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	loose := write("loose.key", strings.Repeat("k", 32), 0o644)
	short := write("short.key", "tooshort", 0o600)
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no command", nil, exitUsage, "usage"},
		{"unknown command", []string{"run"}, exitUsage, "unknown command"},
		{"init without dir", []string{"init"}, exitUsage, "--dir is required"},
		{"init bad key type", []string{"init", "--dir", dir + "/x", "--key-type", "dsa"}, exitUsage, "unknown key type"},
		{"missing config", []string{"serve", "--config", filepath.Join(dir, "none.json")}, exitUsage, "no such file"},
		{"unknown field", []string{"serve", "--config", write("u.json", `{"listne":"x"}`, 0o600)}, exitUsage, `unknown field "listne"`},
		{"syntax", []string{"serve", "--config", write("s.json", `{"listen":`, 0o600)}, exitUsage, "s.json"},
		{"missing field", []string{"serve", "--config", write("m.json", `{"cert":"a","key":"b","client_ca":"c","db":"d"}`, 0o600)}, exitUsage, "master_key: required"},
		{"bad duration", []string{"serve", "--config", write("d.json", `{"cert":"a","key":"b","client_ca":"c","db":"d","master_key":"m","idle_timeout":"soon"}`, 0o600)}, exitUsage, "idle_timeout"},
		{"bad right", []string{"serve", "--config", write("r.json", `{"cert":"a","key":"b","client_ca":"c","db":"d","master_key":"m","policy":{"group_grants":[{"identity":"p","group":"g","rights":["fly"]}]}}`, 0o600)}, exitUsage, `unknown right "fly"`},
		{"flags missing", []string{"serve", "--cert", caFile}, exitUsage, "required"},
		{"config and flags", []string{"serve", "--config", "x", "--db", "y"}, exitUsage, "excludes"},
		{"unreadable cert", []string{"serve", "--cert", filepath.Join(dir, "nope.crt"), "--key", caKey, "--client-ca", caFile, "--db", filepath.Join(dir, "db"), "--master-key", loose}, exitFail, "nope.crt"},
		{"loose master key", []string{"serve", "--cert", caFile, "--key", caKey, "--client-ca", caFile, "--db", filepath.Join(dir, "db"), "--master-key", loose}, exitFail, "chmod 600"},
		{"short master key", []string{"serve", "--cert", caFile, "--key", caKey, "--client-ca", caFile, "--db", filepath.Join(dir, "db"), "--master-key", short}, exitFail, "want 32"},
		{"bad listen", []string{"serve", "--listen", "nowhere", "--cert", caFile, "--key", caKey, "--client-ca", caFile, "--db", "d", "--master-key", short}, exitUsage, "not host:port"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var errb bytes.Buffer
			code := run(context.Background(), tc.args, io.Discard, &errb)
			if code != tc.code || !strings.Contains(errb.String(), tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d mentioning %q", code, errb.String(), tc.code, tc.want)
			}
		})
	}
}
