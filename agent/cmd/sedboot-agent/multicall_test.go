package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMultiCall builds the agent and runs it as the production image does:
// called "sedctl" (the image's /bin/sedctl links to /init) it is sedctl;
// under its own name, and not PID 1, the agent refuses to run.
func TestMultiCall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "init")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(build.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	link := filepath.Join(dir, sedctlName)
	if err := os.Symlink("init", link); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(link, "help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "usage: sedctl <command>") || !strings.Contains(string(out), "unlock-drive") {
		t.Fatalf("as sedctl: %v\n%s", err, out)
	}
	out, err = exec.Command(link, "no-such-command").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), `unknown command "no-such-command"`) {
		t.Fatalf("as sedctl, an unknown command: %v\n%s", err, out)
	}
	out, err = exec.Command(bin).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "not PID 1") {
		t.Fatalf("as the agent: %v\n%s", err, out)
	}
}
