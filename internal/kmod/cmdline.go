package kmod

import (
	"strings"
)

// ParamsFromCmdline collects module parameters from a kernel command line
// (the contents of /proc/cmdline), as modprobe does for loadable modules:
// every "module.param=value" word (value may be double-quoted) becomes
// "param=value" in the result under the module's normalized name; several
// parameters of one module are joined with spaces. Words after a lone
// "--" belong to init and are ignored.
func ParamsFromCmdline(cmdline string) map[string]string {
	out := map[string]string{}
	for _, w := range splitCmdline(cmdline) {
		if w == "--" {
			break
		}
		key, val, hasVal := strings.Cut(w, "=")
		mod, param, ok := strings.Cut(key, ".")
		if !ok || mod == "" || param == "" || !validModuleName(mod) {
			continue
		}
		p := param
		if hasVal {
			if strings.ContainsAny(val, " \t") {
				val = `"` + val + `"`
			}
			p += "=" + val
		}
		name := NormalizeName(mod)
		if prev, ok := out[name]; ok {
			out[name] = prev + " " + p
		} else {
			out[name] = p
		}
	}
	return out
}

func validModuleName(s string) bool {
	for _, r := range s {
		if !(r == '_' || r == '-' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')) {
			return false
		}
	}
	return true
}

// splitCmdline splits a kernel command line into words the way the kernel
// does: whitespace separates words except inside double quotes, and the
// quotes themselves are removed.
func splitCmdline(s string) []string {
	var words []string
	var cur strings.Builder
	inQuote, inWord := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			inWord = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}
