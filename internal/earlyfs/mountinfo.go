package earlyfs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// MountInfo is one line of /proc/<pid>/mountinfo.
type MountInfo struct {
	ID, ParentID int
	Major, Minor int
	Root         string // path of the mounted subtree's root inside its file system
	MountPoint   string // relative to the reading process's root
	Options      string
	FSType       string
	Source       string
	SuperOptions string
}

// ParseMountInfo parses the mountinfo format of proc(5), unescaping the
// octal escapes (\040 for a space) the kernel writes in paths.
func ParseMountInfo(r io.Reader) ([]MountInfo, error) {
	var out []MountInfo
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		pre, post, ok := strings.Cut(line, " - ")
		f := strings.Fields(pre)
		g := strings.Fields(post)
		if !ok || len(f) < 6 || len(g) < 2 {
			return nil, fmt.Errorf("mountinfo line %d: malformed: %q", n, line)
		}
		var m MountInfo
		var err1, err2 error
		m.ID, err1 = strconv.Atoi(f[0])
		m.ParentID, err2 = strconv.Atoi(f[1])
		maj, min, ok := strings.Cut(f[2], ":")
		if err1 != nil || err2 != nil || !ok {
			return nil, fmt.Errorf("mountinfo line %d: malformed ids: %q", n, line)
		}
		if m.Major, err1 = strconv.Atoi(maj); err1 != nil {
			return nil, fmt.Errorf("mountinfo line %d: bad major %q", n, maj)
		}
		if m.Minor, err1 = strconv.Atoi(min); err1 != nil {
			return nil, fmt.Errorf("mountinfo line %d: bad minor %q", n, min)
		}
		m.Root = unescape(f[3])
		m.MountPoint = unescape(f[4])
		m.Options = f[5]
		m.FSType = g[0]
		m.Source = unescape(g[1])
		if len(g) > 2 {
			m.SuperOptions = g[2]
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return out, nil
}

// unescape undoes the kernel's \ooo escaping of space, tab, newline and
// backslash in mountinfo fields.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			v, _ := strconv.ParseUint(s[i+1:i+4], 8, 8)
			b.WriteByte(byte(v))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// mountinfoPaths are tried in order: thread-self first, because a thread
// that unshared its mount namespace sees its own table only there.
var mountinfoPaths = []string{"/proc/thread-self/mountinfo", "/proc/self/mountinfo"}

// ReadMountInfo reads the calling thread's mount table. It fails with an
// error wrapping os.ErrNotExist when /proc is not mounted.
func ReadMountInfo() ([]MountInfo, error) {
	var firstErr error
	for _, p := range mountinfoPaths {
		f, err := os.Open(p)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		defer f.Close()
		mi, err := ParseMountInfo(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		return mi, nil
	}
	if errors.Is(firstErr, os.ErrNotExist) {
		return nil, fmt.Errorf("read mount table: /proc is not mounted: %w", firstErr)
	}
	return nil, fmt.Errorf("read mount table: %w", firstErr)
}

// findMount returns the last (topmost) mount at target, if any.
func findMount(mi []MountInfo, target string) (MountInfo, bool) {
	var found MountInfo
	ok := false
	for _, m := range mi {
		if m.MountPoint == target {
			found, ok = m, true
		}
	}
	return found, ok
}
