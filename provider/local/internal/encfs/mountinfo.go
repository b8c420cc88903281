package encfs

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// mountSource returns the source of the topmost mount at mountPoint (an
// absolute, clean path), from /proc/self/mountinfo.
func mountSource(mountPoint string) (source string, ok bool, err error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", false, fmt.Errorf("encfs: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		f := strings.Fields(sc.Text())
		if len(f) < 10 || unescape(f[4]) != mountPoint {
			continue
		}
		for i := 6; i < len(f)-2; i++ {
			if f[i] == "-" {
				source, ok = unescape(f[i+2]), true // later lines are mounted on top
				break
			}
		}
	}
	return source, ok, sc.Err()
}

// unescape undoes the kernel's octal escaping of space, tab, newline and
// backslash in mountinfo fields.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
