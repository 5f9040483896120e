// Package testenv decides what a test does when a prerequisite (a program,
// a kernel image, a server) is missing: under CI (CI=true) that is a
// failure, because CI must run every test for real; on a developer's
// machine the test is skipped with a message saying how to get it.
package testenv

import (
	"os"
	"os/exec"
	"strconv"
	"testing"
)

// InCI reports whether the tests run under CI (the CI environment
// variable is set to a true value).
func InCI() bool {
	v, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && v
}

// Require fails (under CI) or skips (elsewhere) the test when ok is false.
// what names the missing prerequisite and how to get it, e.g.
// "qemu-system-x86_64 (run scripts/prereqs.sh)".
func Require(t testing.TB, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if InCI() {
		t.Fatalf("missing prerequisite under CI: %s", what)
	}
	t.Skipf("missing prerequisite: %s", what)
}

// LookPath returns the path of program, failing or skipping the test as
// Require does when it is not installed.
func LookPath(t testing.TB, program, hint string) string {
	t.Helper()
	p, err := exec.LookPath(program)
	Require(t, err == nil, program+" not found ("+hint+")")
	return p
}
