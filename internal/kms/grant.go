package kms

import (
	"fmt"
	"slices"
	"strings"

	"github.com/ovh/kmip-go/ttlv"
)

// GrantAttribute is kmsd's custom attribute (package kmsserver) through
// which an administrator gives an identity rights on one object: one
// grant per attribute instance, a text value "IDENTITY=right[,right]"
// (Grant). Other servers reject it; their access policy is their
// administrator's.
const GrantAttribute = "x-kmsd-grant"

// Grant is one value of GrantAttribute.
type Grant struct {
	Identity string   `json:"identity"`
	Rights   []string `json:"rights"`
}

// ParseGrant reads "IDENTITY=right[,right]": spaces around the identity
// and the rights are dropped, as are empty rights; the rights come out
// sorted and unique. Which rights exist is the server's to judge.
func ParseGrant(s string) (Grant, error) {
	id, rights, ok := strings.Cut(s, "=")
	id = strings.TrimSpace(id)
	if !ok || id == "" {
		return Grant{}, fmt.Errorf("grant %q: want IDENTITY=right[,right]", s)
	}
	g := Grant{Identity: id}
	for r := range strings.SplitSeq(rights, ",") {
		if r = strings.TrimSpace(r); r != "" {
			g.Rights = append(g.Rights, r)
		}
	}
	slices.Sort(g.Rights)
	g.Rights = slices.Compact(g.Rights)
	return g, nil
}

// String renders g as its attribute value.
func (g Grant) String() string { return g.Identity + "=" + strings.Join(g.Rights, ",") }

// TextValue returns an attribute value that is text, as kmip-go decodes
// it: a string, or for custom attributes a ttlv.Value holding one.
func TextValue(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case ttlv.Value:
		s, ok := x.Value.(string)
		return s, ok
	}
	return "", false
}
