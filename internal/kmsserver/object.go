package kmsserver

import (
	"slices"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipserver"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/sedboot/sedboot/internal/kms"
)

// Rights an identity can hold on an object.
const (
	// RightGet releases the key material (Get).
	RightGet = "get"
	// RightRead shows the object (Locate, Get Attributes, Get Attribute
	// List).
	RightRead = "read"
	// RightManage changes the object (Activate, Revoke, Destroy, attribute
	// changes other than grants).
	RightManage = "manage"
)

var allRights = []string{RightGet, RightRead, RightManage}

// Attribute names specific to kmsd.
const (
	// AttrOwner is the identity that registered the object (read-only).
	AttrOwner = "x-kmsd-owner"
	// AttrGrant holds one grant per instance, "IDENTITY=right,right"
	// (kms.Grant). Only administrators may add, modify or delete it.
	AttrGrant = kms.GrantAttribute
)

// object is a managed object as stored.
type object struct {
	ID             string          `json:"id"`
	ObjectType     kmip.ObjectType `json:"object_type"`
	SecretDataType uint32          `json:"secret_data_type"`
	KeyFormatType  uint32          `json:"key_format_type"`
	// Sealed is the material encrypted under the master key; empty once
	// destroyed.
	Sealed []byte `json:"sealed,omitempty"`

	Names    []string     `json:"names,omitempty"`
	Groups   []string     `json:"groups,omitempty"`
	AppInfo  []appInfo    `json:"app_info,omitempty"`
	Custom   []customAttr `json:"custom,omitempty"`
	Owner    string       `json:"owner"`
	Grants   []grant      `json:"grants,omitempty"`
	UsageMsk uint32       `json:"usage_mask,omitempty"`

	State            kmip.State `json:"state"`
	Extractable      bool       `json:"extractable"`
	NeverExtractable bool       `json:"never_extractable"`
	Sensitive        bool       `json:"sensitive"`
	AlwaysSensitive  bool       `json:"always_sensitive"`

	Initial     time.Time `json:"initial,omitzero"`
	Activation  time.Time `json:"activation,omitzero"`
	Deactivate  time.Time `json:"deactivation,omitzero"`
	Compromise  time.Time `json:"compromise,omitzero"`
	CompromiseO time.Time `json:"compromise_occurrence,omitzero"`
	Destroyed   time.Time `json:"destroy,omitzero"`
	LastChange  time.Time `json:"last_change,omitzero"`

	RevocationCode    uint32 `json:"revocation_code,omitempty"`
	RevocationMessage string `json:"revocation_message,omitempty"`
}

type appInfo struct {
	Namespace string `json:"ns"`
	Data      string `json:"data"`
}

// customAttr is an "x-" or "y-" attribute; its value is kept TTLV-encoded
// so any type round-trips.
type customAttr struct {
	Name  string `json:"name"`
	Value []byte `json:"ttlv"`
}

// grant is one identity's rights on an object (stored as JSON with the
// object).
type grant = kms.Grant

// parseGrant parses "IDENTITY=right,right"; "all" stands for every right.
func parseGrant(s string) (grant, error) {
	g, err := kms.ParseGrant(s)
	if err != nil {
		return grant{}, kmipserver.Errorf(kmip.ResultReasonInvalidField, "%s: want IDENTITY=right[,right], got %q", AttrGrant, s)
	}
	var rights []string
	for _, r := range g.Rights {
		if r == "all" {
			rights = append(rights, allRights...)
			continue
		}
		if !slices.Contains(allRights, r) {
			return grant{}, kmipserver.Errorf(kmip.ResultReasonInvalidField, "%s: unknown right %q (want get, read, manage or all)", AttrGrant, r)
		}
		rights = append(rights, r)
	}
	slices.Sort(rights)
	g.Rights = slices.Compact(rights)
	return g, nil
}

func (o *object) destroyed() bool {
	return o.State == kmip.StateDestroyed || o.State == kmip.StateDestroyedCompromised
}

// grantFor returns the rights the object's grants give identity.
func (o *object) grantFor(identity string) []string {
	for _, g := range o.Grants {
		if g.Identity == identity {
			return g.Rights
		}
	}
	return nil
}

// setGrant replaces (or adds, or with no rights removes) identity's grant.
func (o *object) setGrant(g grant) {
	o.Grants = slices.DeleteFunc(o.Grants, func(x grant) bool { return x.Identity == g.Identity })
	if len(g.Rights) > 0 {
		o.Grants = append(o.Grants, g)
	}
}

// attr makes a KMIP attribute, with an index for multi-valued ones.
func attr(name kmip.AttributeName, value any, index int) kmip.Attribute {
	a := kmip.Attribute{AttributeName: name, AttributeValue: value}
	if index >= 0 {
		i := int32(index)
		a.AttributeIndex = &i
	}
	return a
}

// attributes lists the object's attributes; with names, only those.
func (o *object) attributes(names []kmip.AttributeName) []kmip.Attribute {
	want := func(n kmip.AttributeName) bool { return len(names) == 0 || slices.Contains(names, n) }
	var out []kmip.Attribute
	add := func(n kmip.AttributeName, v any, idx int) {
		if want(n) {
			out = append(out, attr(n, v, idx))
		}
	}
	add(kmip.AttributeNameUniqueIdentifier, o.ID, -1)
	for i, n := range o.Names {
		add(kmip.AttributeNameName, kmip.Name{NameValue: n, NameType: kmip.NameTypeUninterpretedTextString}, i)
	}
	add(kmip.AttributeNameObjectType, o.ObjectType, -1)
	add(kmip.AttributeNameState, o.State, -1)
	if o.UsageMsk != 0 {
		add(kmip.AttributeNameCryptographicUsageMask, kmip.CryptographicUsageMask(o.UsageMsk), -1)
	}
	for _, d := range []struct {
		n kmip.AttributeName
		t time.Time
	}{
		{kmip.AttributeNameInitialDate, o.Initial},
		{kmip.AttributeNameActivationDate, o.Activation},
		{kmip.AttributeNameDeactivationDate, o.Deactivate},
		{kmip.AttributeNameCompromiseDate, o.Compromise},
		{kmip.AttributeNameCompromiseOccurrenceDate, o.CompromiseO},
		{kmip.AttributeNameDestroyDate, o.Destroyed},
		{kmip.AttributeNameLastChangeDate, o.LastChange},
	} {
		if !d.t.IsZero() {
			add(d.n, d.t, -1)
		}
	}
	if o.RevocationCode != 0 {
		add(kmip.AttributeNameRevocationReason, kmip.RevocationReason{
			RevocationReasonCode: kmip.RevocationReasonCode(o.RevocationCode), RevocationMessage: o.RevocationMessage}, -1)
	}
	for i, g := range o.Groups {
		add(kmip.AttributeNameObjectGroup, g, i)
	}
	for i, a := range o.AppInfo {
		add(kmip.AttributeNameApplicationSpecificInformation, kmip.ApplicationSpecificInformation{ApplicationNamespace: a.Namespace, ApplicationData: a.Data}, i)
	}
	add(kmip.AttributeNameExtractable, o.Extractable, -1)
	add(kmip.AttributeNameNeverExtractable, o.NeverExtractable, -1)
	add(kmip.AttributeNameSensitive, o.Sensitive, -1)
	add(kmip.AttributeNameAlwaysSensitive, o.AlwaysSensitive, -1)
	add(kmip.AttributeNameKeyValuePresent, len(o.Sealed) > 0, -1)
	add(AttrOwner, o.Owner, -1)
	for i, g := range o.Grants {
		add(AttrGrant, g.String(), i)
	}
	counts := map[string]int{}
	for _, c := range o.Custom {
		v := ttlv.Value{}
		if err := ttlv.UnmarshalTTLV(c.Value, &v); err != nil {
			continue
		}
		add(kmip.AttributeName(c.Name), v, counts[c.Name])
		counts[c.Name]++
	}
	return out
}

// attributeNames lists the names of the attributes the object has.
func (o *object) attributeNames() []kmip.AttributeName {
	var names []kmip.AttributeName
	for _, a := range o.attributes(nil) {
		if !slices.Contains(names, a.AttributeName) {
			names = append(names, a.AttributeName)
		}
	}
	return names
}

// encodeCustom keeps a custom attribute's value as TTLV.
func encodeCustom(name kmip.AttributeName, v any) (customAttr, error) {
	val, ok := v.(ttlv.Value)
	if !ok {
		// Values built in-process (tests) rather than decoded.
		val = ttlv.Value{Value: v}
	}
	switch val.Value.(type) {
	case int32, int64, bool, []byte, time.Time, string, ttlv.Enum, time.Duration:
	default:
		return customAttr{}, kmipserver.Errorf(kmip.ResultReasonInvalidField, "custom attribute %q: unsupported value type", name)
	}
	val.Tag = int(kmip.TagAttributeValue)
	return customAttr{Name: string(name), Value: ttlv.MarshalTTLV(val)}, nil
}

// customText returns a text-valued custom attribute as a string (for
// Locate matching).
func customText(c customAttr) (string, bool) {
	v := ttlv.Value{}
	if err := ttlv.UnmarshalTTLV(c.Value, &v); err != nil {
		return "", false
	}
	s, ok := v.Value.(string)
	return s, ok
}

func stateName(s kmip.State) string { return ttlv.EnumStr(s) }

func errf(reason kmip.ResultReason, format string, args ...any) error {
	return kmipserver.Errorf(reason, format, args...)
}

func notFound(id string) error {
	return errf(kmip.ResultReasonItemNotFound, "object %s not found", id)
}

func denied(format string, args ...any) error {
	return errf(kmip.ResultReasonPermissionDenied, format, args...)
}
