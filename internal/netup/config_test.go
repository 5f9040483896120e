package netup

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	good := Config{Interface: "eth0", Mode: ModeStatic, Addresses: []string{"192.0.2.10/24"}, Gateway: "192.0.2.1"}
	tests := []struct {
		name   string
		mutate func(c *Config)
		fields []string // the FieldError fields expected, in order
	}{
		{"valid static", func(c *Config) {}, nil},
		{"valid dhcp by MAC", func(c *Config) {
			*c = Config{MAC: "52:54:00:12:34:56", Mode: ModeDHCP, Routes: []Route{{Destination: "198.51.100.0/24"}}}
		}, nil},
		{"no link selector", func(c *Config) { c.Interface = "" }, []string{"interface"}},
		{"bad interface", func(c *Config) { c.Interface = "eth0/x" }, []string{"interface"}},
		{"long interface", func(c *Config) { c.Interface = "abcdefghijklmnop" }, []string{"interface"}},
		{"bad mac", func(c *Config) { c.MAC = "52:54:00" }, []string{"mac"}},
		{"no mode", func(c *Config) { c.Mode = "" }, []string{"mode"}},
		{"bad mode", func(c *Config) { c.Mode = "bootp" }, []string{"mode"}},
		{"static without address", func(c *Config) { c.Addresses = nil; c.Gateway = "" }, []string{"addresses"}},
		{"bad addresses", func(c *Config) {
			c.Addresses = []string{"192.0.2.10/24", "192.0.2.300/24", "2001:db8::1/64", "192.0.2.0/24", "192.0.2.255/24", "127.0.0.2/8", "192.0.2.11"}
		}, []string{"addresses[1]", "addresses[2]", "addresses[3]", "addresses[4]", "addresses[5]", "addresses[6]"}},
		{"point to point /31 and /32 are hosts", func(c *Config) {
			c.Addresses = []string{"192.0.2.10/24", "198.51.100.0/31", "203.0.113.7/32"}
		}, nil},
		{"gateway off-link", func(c *Config) { c.Gateway = "198.51.100.1" }, []string{"gateway"}},
		{"gateway is own address", func(c *Config) { c.Gateway = "192.0.2.10" }, []string{"gateway"}},
		{"gateway not IPv4", func(c *Config) { c.Gateway = "fe80::1" }, []string{"gateway"}},
		{"dhcp with addresses", func(c *Config) { c.Mode = ModeDHCP }, []string{"addresses", "gateway"}},
		{"routes", func(c *Config) {
			c.Routes = []Route{
				{Destination: "198.51.100.0/24", Gateway: "192.0.2.1"},
				{Destination: "198.51.100.7/24"},
				{Destination: "nonsense"},
				{Destination: "203.0.113.0/24", Gateway: "203.0.113.1"},
				{Destination: "203.0.113.0/24", Gateway: "x"},
			}
		}, []string{"routes[1].destination", "routes[2].destination", "routes[3].gateway", "routes[4].gateway"}},
		{"dns", func(c *Config) { c.DNS = []string{"192.0.2.53", "dns.example"} }, []string{"dns[1]"}},
		{"mtu", func(c *Config) { c.MTU = 67 }, []string{"mtu"}},
		{"mtu ok", func(c *Config) { c.MTU = 9000 }, nil},
		{"timeouts", func(c *Config) { c.LinkTimeout = -1; c.CarrierTimeout = -time.Second; c.DHCPTimeout = -1 },
			[]string{"link_timeout", "carrier_timeout", "dhcp_timeout"}},
		{"attempts", func(c *Config) { c.DHCPAttempts = 21 }, []string{"dhcp_attempts"}},
		{"resolv.conf relative", func(c *Config) { c.ResolvConf = "etc/resolv.conf" }, []string{"resolv_conf"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			c.Addresses = append([]string(nil), good.Addresses...)
			tc.mutate(&c)
			err := c.Validate()
			var got []string
			if err != nil {
				for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
					var fe *FieldError
					if !errors.As(e, &fe) {
						t.Fatalf("error %v is not a *FieldError", e)
					}
					if !strings.Contains(e.Error(), fe.Field) {
						t.Errorf("error %q does not name its field %s", e, fe.Field)
					}
					got = append(got, fe.Field)
				}
			}
			if strings.Join(got, " ") != strings.Join(tc.fields, " ") {
				t.Errorf("Validate() fields = %v, want %v (error: %v)", got, tc.fields, err)
			}
		})
	}
}

func TestTransactionID(t *testing.T) {
	seen := map[[4]byte]bool{}
	for range 64 {
		xid, src, err := TransactionID()
		if err != nil {
			t.Fatal(err)
		}
		switch src {
		case XIDGetrandom, XIDGetrandomInsecure, XIDURandom:
		default:
			t.Fatalf("unknown source %q", src)
		}
		seen[xid] = true
	}
	if len(seen) < 60 {
		t.Errorf("64 transaction IDs gave only %d distinct values", len(seen))
	}
}
