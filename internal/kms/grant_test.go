package kms

import (
	"reflect"
	"testing"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/ttlv"
)

func TestParseGrant(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Grant
		err  bool
	}{
		{in: "array-A1=get,read", want: Grant{"array-A1", []string{"get", "read"}}},
		{in: " array-A1 = read , get,,read ", want: Grant{"array-A1", []string{"get", "read"}}},
		{in: "admin=", want: Grant{Identity: "admin"}},
		{in: "=get", err: true},
		{in: "no equals sign", err: true},
	} {
		g, err := ParseGrant(tc.in)
		if (err != nil) != tc.err || (!tc.err && !reflect.DeepEqual(g, tc.want)) {
			t.Errorf("ParseGrant(%q) = %+v, %v; want %+v (error %v)", tc.in, g, err, tc.want, tc.err)
		}
		if err == nil && g.Rights != nil {
			if back, _ := ParseGrant(g.String()); !reflect.DeepEqual(back, g) {
				t.Errorf("%q does not round-trip: %+v", g.String(), back)
			}
		}
	}
}

func TestGrantsOfAttributes(t *testing.T) {
	raw := []kmip.Attribute{
		{AttributeName: GrantAttribute, AttributeValue: ttlv.Value{Value: "array-A1=read,get"}},
		{AttributeName: GrantAttribute, AttributeValue: "admin=manage"},
		{AttributeName: GrantAttribute, AttributeValue: ttlv.Value{Value: 7}},
		{AttributeName: GrantAttribute, AttributeValue: "garbage"},
		{AttributeName: "x-other", AttributeValue: ttlv.Value{Value: "array-A1=get"}},
	}
	want := []Grant{{"array-A1", []string{"get", "read"}}, {"admin", []string{"manage"}}}
	if got := parseAttributes("id", raw).Grants; !reflect.DeepEqual(got, want) {
		t.Fatalf("grants %+v, want %+v", got, want)
	}
}
