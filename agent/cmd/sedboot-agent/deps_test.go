package main

import (
	"os/exec"
	"strings"
	"testing"
)

// forbidden lists packages the boot agent must not link: it speaks KMIP
// over TLS and netlink, nothing else, and stays small.
var forbidden = map[string]string{
	"net/http":                           "the agent has no HTTP client or server",
	"net/rpc":                            "no RPC",
	"net/smtp":                           "no mail",
	"html/template":                      "no templates",
	"text/template":                      "no templates",
	"plugin":                             "no plugins",
	"os/exec":                            "PID 1 starts the recovery shell with syscall.ForkExec and reaps every child itself",
	"expvar":                             "no debug endpoints",
	"net/http/pprof":                     "no debug endpoints",
	"github.com/u-root/u-root/pkg/shell": "the shell is a separate program",
}

// TestDeps lists the agent's imports for its target (linux/amd64, no cgo)
// and fails on any forbidden one, naming who imports it.
func TestDeps(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{join .Imports \",\"}}", ".")
	cmd.Env = append(cmd.Environ(), "GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	importers := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, imps, _ := strings.Cut(line, " ")
		for _, imp := range strings.Split(imps, ",") {
			if imp != "" {
				importers[imp] = append(importers[imp], pkg)
			}
		}
		if strings.Contains(pkg, "/cgo") || pkg == "runtime/cgo" {
			t.Errorf("agent links cgo (%s)", pkg)
		}
	}
	for pkg, why := range forbidden {
		if by, ok := importers[pkg]; ok {
			t.Errorf("agent imports %s (imported by %s): %s", pkg, strings.Join(by, ", "), why)
		}
	}
	if len(importers) < 10 {
		t.Fatalf("go list found only %d imports: the check is not looking at the agent", len(importers))
	}
}
