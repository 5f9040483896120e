package qemu

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// helperArg marks a re-execution of this program as a forward helper:
//
//	<program> -sedboot-qemu-guestfwd <host:port> <registration dir>
//
// QEMU starts it for each guest connection with the connection on its
// standard input and output (and error).
const helperArg = "-sedboot-qemu-guestfwd"

// helperDialTimeout bounds the helper's connection to the host address.
const helperDialTimeout = 10 * time.Second

func init() {
	if len(os.Args) == 4 && os.Args[1] == helperArg {
		os.Exit(runHelper(os.Args[2], os.Args[3]))
	}
}

// runHelper registers the helper in dir (so the harness can end it), dials
// host and relays between it and the guest connection on fds 0 and 1.
// Nothing may be written to stderr: it is the guest's connection too.
func runHelper(host, dir string) int {
	reg := filepath.Join(dir, strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(reg, nil, 0o644); err != nil {
		return 1
	}
	defer os.Remove(reg)
	guest := os.NewFile(0, "guest")
	if err := relay(guest, host); err != nil {
		logHelperError(dir, host, err)
		return 1
	}
	return 0
}

// relay connects guest (a socket) to a new connection to host until both
// directions are done, passing half-closes along.
func relay(guest *os.File, host string) error {
	conn, err := net.DialTimeout("tcp", host, helperDialTimeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	tcp := conn.(*net.TCPConn)
	errc := make(chan error, 2)
	go func() { // guest -> host
		_, err := io.Copy(tcp, guest)
		tcp.CloseWrite()
		errc <- err
	}()
	go func() { // host -> guest
		_, err := io.Copy(guest, tcp)
		// The guest's connection is a socket: shut down its write side so
		// the guest sees the end of the stream.
		unix.Shutdown(int(guest.Fd()), unix.SHUT_WR)
		errc <- err
	}()
	var first error
	for range 2 {
		if err := <-errc; err != nil && first == nil && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
			first = err
		}
	}
	return first
}

// logHelperError appends a helper's failure to forward.log beside dir.
func logHelperError(dir, host string, err error) {
	f, ferr := os.OpenFile(filepath.Join(filepath.Dir(dir), "forward.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if ferr != nil {
		return
	}
	defer f.Close()
	f.WriteString(time.Now().Format(time.RFC3339Nano) + " forward to " + host + ": " + err.Error() + "\n")
}

// liveHelpers returns the helpers registered in dir that still run. A
// registration is trusted only if the process's command line still names
// dir, so a recycled pid is never taken for a helper.
func liveHelpers(dir string) []int {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 1 {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !strings.Contains(string(cmdline), "\x00"+dir+"\x00") {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// helperExitWait bounds how long killHelpers waits for killed helpers to
// be gone.
const helperExitWait = 10 * time.Second

// killHelpers kills every live helper registered in dir and waits until
// they are gone: exited, or zombies that nobody reaps (their parent is
// whatever adopted them when QEMU's spawner let go).
func killHelpers(dir string, log *slog.Logger) {
	pids := liveHelpers(dir)
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			log.Debug("killed forward helper", "pid", pid)
		}
	}
	deadline := time.Now().Add(helperExitWait)
	for _, pid := range pids {
		for !processGone(pid) {
			if time.Now().After(deadline) {
				log.Warn("forward helper survives SIGKILL", "pid", pid)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// processGone reports whether pid has exited (no process, or a zombie).
func processGone(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// The state follows the parenthesised command name.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && (s[i+2] == 'Z' || s[i+2] == 'X')
}
