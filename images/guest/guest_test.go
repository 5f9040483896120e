package guest

import (
	"maps"
	"testing"
)

func TestParseKernelArgs(t *testing.T) {
	tests := []struct {
		in   string
		want map[string]string
	}{
		{"", map[string]string{}},
		{"console=ttyS0 panic=-1 quiet sedboot.test=smoke\n",
			map[string]string{"console": "ttyS0", "panic": "-1", "quiet": "", "sedboot.test": "smoke"}},
		{"a=b=c  a2=", map[string]string{"a": "b=c", "a2": ""}},
		{"x=1 x=2", map[string]string{"x": "2"}},
	}
	for _, tt := range tests {
		if got := ParseKernelArgs(tt.in); !maps.Equal(got, tt.want) {
			t.Errorf("ParseKernelArgs(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}
