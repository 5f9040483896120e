package kms

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"

	"github.com/sedboot/sedboot/internal/secret"
)

// Verdict is the outcome of one capability check. For operations and
// attributes Yes means it works; for ways of refusing a Get, Yes means the
// server enforces it.
type Verdict string

// Verdicts.
const (
	Yes     Verdict = "yes"
	No      Verdict = "no"
	Unknown Verdict = "unknown"
	Skipped Verdict = "skipped"
)

// Checks a capability probe makes.
const (
	CheckRegister        = "Register"
	CheckLocate          = "Locate by name and group"
	CheckLocateGroup     = "Locate by group"
	CheckGet             = "Get"
	CheckBatchedGet      = "Batched Get"
	CheckGetAttributes   = "Get Attributes"
	CheckActivate        = "Activate"
	CheckRevoke          = "Revoke"
	CheckDestroy         = "Destroy"
	CheckAddAttribute    = "Add Attribute"
	CheckModifyAttribute = "Modify Attribute"
	CheckDeleteAttribute = "Delete Attribute"
	CheckObjectGroup     = "Object Group attribute"
	CheckCustomAttrs     = "x- custom attributes"
	CheckAppInfo         = "Application Specific Information"
	// Ways of refusing a Get.
	RefuseExtractable = "refuses Get when Extractable=false"
	RefuseSensitive   = "refuses Get when Sensitive=true"
	RefuseRevoked     = "refuses Get of a revoked key"
	RefusePolicy      = "refuses Get to another identity"
)

// probeChecks is the order findings are reported in.
var probeChecks = []string{
	CheckRegister, CheckObjectGroup, CheckCustomAttrs, CheckAppInfo, CheckLocate, CheckLocateGroup,
	CheckGet, CheckBatchedGet, CheckGetAttributes, CheckActivate, CheckAddAttribute, CheckModifyAttribute,
	CheckDeleteAttribute, CheckRevoke, CheckDestroy,
	RefuseExtractable, RefuseSensitive, RefuseRevoked, RefusePolicy,
}

// Finding is the result of one check.
type Finding struct {
	Check   string  `json:"check"`
	Verdict Verdict `json:"verdict"`
	Detail  string  `json:"detail,omitempty"`
}

// Capabilities is what a probe found a server does.
type Capabilities struct {
	Server      string `json:"server"`
	KMIPVersion string `json:"kmip_version"`
	// Info is the server's answer to Query, nil when Query failed.
	Info *ServerInfo `json:"query,omitempty"`
	// QueryError says why Query failed.
	QueryError string `json:"query_error,omitempty"`
	// Findings in a fixed order.
	Findings []Finding `json:"findings"`
	// Metadata is the form Register should use for metadata on this
	// server.
	Metadata MetadataMode `json:"metadata"`
	// Leftovers lists probe objects the probe could not destroy.
	Leftovers []string `json:"leftovers,omitempty"`
}

// Finding returns the finding of check (Unknown if it was not made).
func (c *Capabilities) Finding(check string) Finding {
	for _, f := range c.Findings {
		if f.Check == check {
			return f
		}
	}
	return Finding{Check: check, Verdict: Unknown}
}

// Has reports whether check's verdict is Yes.
func (c *Capabilities) Has(check string) bool { return c.Finding(check).Verdict == Yes }

// CanLock reports whether the server enforces at least one way of
// refusing a Get that can be switched on for keys that already exist, and
// names it: Extractable=false or Sensitive=true (reversible by an
// administrator on servers that allow it), else revocation (permanent).
// Refusing identities that were never granted access (RefusePolicy) does
// not count: it does not show that access can be withdrawn.
func (c *Capabilities) CanLock() (bool, string) {
	for _, chk := range []string{RefuseExtractable, RefuseSensitive, RefuseRevoked} {
		if c.Has(chk) {
			return true, chk
		}
	}
	return false, ""
}

// ProbeOptions configures a capability probe.
type ProbeOptions struct {
	// Other is an optional connection to the same server as a second
	// identity, used to check that the server refuses Get of an object
	// to an identity it was not granted to.
	Other *Conn
	// Prefix starts the probe objects' names (default "sedboot-probe").
	Prefix string
}

type prober struct {
	s        *Conn
	ctx      context.Context
	found    map[string]Finding
	created  []string
	secrets  []*secret.Secret
	prefix   string
	tag      string
	group    string
	customOK bool
	asiOK    bool
	groupOK  bool
}

func (p *prober) set(check string, v Verdict, format string, args ...any) {
	p.found[check] = Finding{Check: check, Verdict: v, Detail: fmt.Sprintf(format, args...)}
}

func (p *prober) setIfUnset(check string, v Verdict, format string, args ...any) {
	if _, ok := p.found[check]; !ok {
		p.set(check, v, format, args...)
	}
}

// Probe finds out, by trying on probe objects it registers and destroys,
// which operations and attributes the server supports and which ways of
// refusing a Get it enforces. It only fails when ctx ends or the server
// cannot be used at all; everything else is a finding. The probe's
// secrets are random and zeroed afterwards.
func (s *Conn) Probe(ctx context.Context, opts ProbeOptions) (*Capabilities, error) {
	tag := make([]byte, 6)
	if _, err := rand.Read(tag); err != nil {
		return nil, fmt.Errorf("kms probe: %w", err)
	}
	p := &prober{s: s, ctx: ctx, found: map[string]Finding{}, prefix: opts.Prefix, tag: hex.EncodeToString(tag)}
	if p.prefix == "" {
		p.prefix = "sedboot-probe"
	}
	p.group = p.prefix + "-" + p.tag
	caps := &Capabilities{Server: s.srv.Label(), KMIPVersion: s.info.KMIPVersion}
	defer func() {
		for _, sec := range p.secrets {
			sec.Zero()
		}
	}()
	if info, err := s.Query(ctx); err != nil {
		caps.QueryError = err.Error()
	} else {
		caps.Info = info
	}
	err := p.run(opts)
	caps.Leftovers = p.cleanup()
	for _, chk := range probeChecks {
		f, ok := p.found[chk]
		if !ok {
			f = Finding{Check: chk, Verdict: Unknown, Detail: "not reached"}
		}
		caps.Findings = append(caps.Findings, f)
	}
	switch {
	case p.customOK:
		caps.Metadata = MetadataCustom
	case p.asiOK:
		caps.Metadata = MetadataASI
	default:
		caps.Metadata = MetadataNone
	}
	if err == nil {
		err = ctx.Err()
	}
	return caps, err
}

func (p *prober) name(n string) string { return p.prefix + "-" + p.tag + "-" + n }

func (p *prober) newSecret() (*secret.Secret, error) {
	sec, err := secret.Random(32)
	if err != nil {
		return nil, fmt.Errorf("kms probe: %w", err)
	}
	p.secrets = append(p.secrets, sec)
	return sec, nil
}

// registerWith registers a probe secret called name with the given extra
// attributes.
func (p *prober) registerWith(name string, value *secret.Secret, extra ...kmip.Attribute) (string, error) {
	b := value.Bytes()
	attrs := append([]kmip.Attribute{nameAttr(name)}, extra...)
	req := &payloads.RegisterRequestPayload{
		ObjectType:        kmip.ObjectTypeSecretData,
		TemplateAttribute: kmip.TemplateAttribute{Attribute: attrs},
		Object: &kmip.SecretData{SecretDataType: kmip.SecretDataTypePassword, KeyBlock: kmip.KeyBlock{
			KeyFormatType: kmip.KeyFormatTypeOpaque,
			KeyValue:      &kmip.KeyValue{Plain: &kmip.PlainKeyValue{KeyMaterial: kmip.KeyMaterial{Bytes: &b}}},
		}},
	}
	pl, err := p.s.do(p.ctx, "Register", name, req)
	if err != nil {
		return "", err
	}
	r, ok := pl.(*payloads.RegisterResponsePayload)
	if !ok || r.UniqueIdentifier == "" {
		return "", p.s.protoErr("Register", name, pl)
	}
	p.created = append(p.created, r.UniqueIdentifier)
	return r.UniqueIdentifier, nil
}

func groupAttr(g string) kmip.Attribute {
	return kmip.Attribute{AttributeName: kmip.AttributeNameObjectGroup, AttributeValue: g}
}

func (p *prober) baseAttrs() []kmip.Attribute {
	if p.groupOK {
		return []kmip.Attribute{groupAttr(p.group)}
	}
	return nil
}

// refused reports whether err is the server refusing the request (as
// opposed to a transport failure).
func refused(err error) bool {
	return errors.Is(err, ErrRejected) || errors.Is(err, ErrNotSupported) || errors.Is(err, ErrDenied) || errors.Is(err, ErrNotFound)
}

func (p *prober) run(opts ProbeOptions) error {
	// Register A with group and a custom attribute, falling back step by
	// step to learn what the server accepts.
	valA, err := p.newSecret()
	if err != nil {
		return err
	}
	custom := kmip.Attribute{AttributeName: kmip.AttributeName("x-" + MetadataNamespace + "-probe"), AttributeValue: p.tag}
	asi := kmip.Attribute{AttributeName: kmip.AttributeNameApplicationSpecificInformation,
		AttributeValue: kmip.ApplicationSpecificInformation{ApplicationNamespace: MetadataNamespace, ApplicationData: "probe=" + p.tag}}
	idA, err := p.registerWith(p.name("a"), valA, groupAttr(p.group), custom)
	switch {
	case err == nil:
		p.groupOK, p.customOK = true, true
		p.set(CheckCustomAttrs, Yes, "accepted at Register")
	case !refused(err):
		return err
	default:
		p.set(CheckCustomAttrs, No, "Register with an x- attribute refused: %s", reasonText(err))
		idA, err = p.registerWith(p.name("a"), valA, groupAttr(p.group))
		if err == nil {
			p.groupOK = true
		} else if !refused(err) {
			return err
		} else {
			p.set(CheckObjectGroup, No, "Register with an Object Group refused: %s", reasonText(err))
			if idA, err = p.registerWith(p.name("a"), valA); err != nil {
				p.set(CheckRegister, No, "Register of Secret Data (Password) with a Name refused: %s", reasonText(err))
				return nil
			}
		}
	}
	p.set(CheckRegister, Yes, "Secret Data (Password) registered as %s", idA)
	if p.groupOK {
		p.set(CheckObjectGroup, Yes, "accepted at Register")
	}

	// B carries Application Specific Information.
	valB, err := p.newSecret()
	if err != nil {
		return err
	}
	idB, err := p.registerWith(p.name("b"), valB, append(p.baseAttrs(), asi)...)
	switch {
	case err == nil:
		p.asiOK = true
		p.set(CheckAppInfo, Yes, "accepted at Register")
	case !refused(err):
		return err
	default:
		p.set(CheckAppInfo, No, "Register with Application Specific Information refused: %s", reasonText(err))
		if idB, err = p.registerWith(p.name("b"), valB, p.baseAttrs()...); err != nil {
			return err
		}
	}

	// Locate.
	group := ""
	if p.groupOK {
		group = p.group
	}
	if ids, err := p.s.Locate(p.ctx, p.name("a"), group); err != nil {
		p.set(CheckLocate, No, "%s", reasonText(err))
	} else if slices.Equal(ids, []string{idA}) {
		p.set(CheckLocate, Yes, "found exactly the probe object")
	} else {
		p.set(CheckLocate, No, "returned %v, want [%s]", ids, idA)
	}
	if p.groupOK {
		if ids, err := p.s.LocateGroup(p.ctx, p.group); err != nil {
			p.set(CheckLocateGroup, No, "%s", reasonText(err))
		} else if slices.Contains(ids, idA) && slices.Contains(ids, idB) && len(ids) == 2 {
			p.set(CheckLocateGroup, Yes, "found both probe objects")
		} else {
			p.set(CheckLocateGroup, No, "returned %v, want %s and %s", ids, idA, idB)
		}
	} else {
		p.set(CheckLocateGroup, Skipped, "no Object Group support")
	}

	// Get, batched.
	secs, errs, err := p.s.GetSecrets(p.ctx, []string{idA, idB})
	if err != nil {
		if !refused(err) {
			return err
		}
		p.set(CheckBatchedGet, No, "%s", reasonText(err))
		p.set(CheckGet, No, "%s", reasonText(err))
	} else {
		p.secrets = append(p.secrets, secs...)
		okA := errs[0] == nil && secs[0].Equal(valA)
		okB := errs[1] == nil && secs[1].Equal(valB)
		switch {
		case okA && okB:
			p.set(CheckGet, Yes, "values returned intact")
			p.set(CheckBatchedGet, Yes, "2 Gets with explicit identifiers in one request, answers in order")
		case errs[0] != nil:
			p.set(CheckGet, No, "%s", reasonText(errs[0]))
		default:
			p.set(CheckGet, No, "value returned differs from the value registered")
		}
		if !(okA && okB) {
			p.setIfUnset(CheckBatchedGet, No, "answers missing, wrong or out of order")
		}
	}

	// Get Attributes.
	if a, err := p.s.GetAttributes(p.ctx, idA); err != nil {
		p.set(CheckGetAttributes, No, "%s", reasonText(err))
	} else if !slices.Contains(a.Names, p.name("a")) {
		p.set(CheckGetAttributes, No, "Name not returned")
	} else {
		p.set(CheckGetAttributes, Yes, "Name, State%s returned", map[bool]string{true: ", Object Group", false: ""}[slices.Contains(a.Groups, p.group)])
		if p.customOK && a.Custom["x-"+MetadataNamespace+"-probe"] != p.tag {
			p.set(CheckCustomAttrs, No, "accepted at Register but not returned by Get Attributes")
			p.customOK = false
		}
	}

	// Activate.
	if err := p.s.Activate(p.ctx, idA); err != nil {
		p.set(CheckActivate, No, "%s", reasonText(err))
	} else if a, err := p.s.GetAttributes(p.ctx, idA, string(kmip.AttributeNameState)); err == nil && a.State == StateActive {
		p.set(CheckActivate, Yes, "Pre-Active -> Active")
	} else {
		p.set(CheckActivate, No, "object not Active after Activate")
	}

	p.attributeOps(idB, custom, asi)
	p.refusal(RefuseExtractable, "x", kmip.AttributeNameExtractable, false)
	p.refusal(RefuseSensitive, "s", kmip.AttributeNameSensitive, true)

	// Revocation.
	if err := p.s.Revoke(p.ctx, idA, RevokeCessation, "sedboot capability probe"); err != nil {
		p.set(CheckRevoke, No, "%s", reasonText(err))
		p.set(RefuseRevoked, Unknown, "could not revoke the probe object")
	} else {
		p.set(CheckRevoke, Yes, "Active -> Deactivated")
		p.getRefused(RefuseRevoked, idA, "a Deactivated key (KMIP itself allows Get in that state)")
	}

	// Another identity.
	if opts.Other == nil {
		p.set(RefusePolicy, Skipped, "no second identity configured")
	} else {
		secs, errs, err := opts.Other.GetSecrets(p.ctx, []string{idB})
		switch {
		case err != nil && !refused(err):
			p.set(RefusePolicy, Unknown, "%s", reasonText(err))
		case err != nil:
			p.set(RefusePolicy, Yes, "%s", reasonText(err))
		case errs[0] != nil:
			p.set(RefusePolicy, Yes, "%s", reasonText(errs[0]))
		default:
			p.secrets = append(p.secrets, secs...)
			p.set(RefusePolicy, No, "another identity obtained the value of an object it was never granted")
		}
	}

	// Destroy B (Pre-Active) and check it is gone.
	if err := p.s.Destroy(p.ctx, idB); err != nil {
		p.set(CheckDestroy, No, "%s", reasonText(err))
	} else {
		p.created = slices.DeleteFunc(p.created, func(id string) bool { return id == idB })
		_, errs, err := p.s.GetSecrets(p.ctx, []string{idB})
		if err == nil && errs[0] != nil && errors.Is(errs[0], ErrNotFound) {
			p.set(CheckDestroy, Yes, "object gone after Destroy")
		} else {
			p.set(CheckDestroy, No, "Get after Destroy did not answer Item Not Found")
		}
	}
	return nil
}

// attributeOps tries Add, Modify and Delete Attribute on id (object B,
// which carries Application Specific Information when the server took it).
func (p *prober) attributeOps(id string, custom, asi kmip.Attribute) {
	attr := custom
	switch {
	case p.customOK:
		attr.AttributeName = kmip.AttributeName("x-" + MetadataNamespace + "-probe-added")
	case p.asiOK:
		attr = asi
	default:
		attr = kmip.Attribute{AttributeName: kmip.AttributeNameObjectGroup, AttributeValue: p.group + "-added"}
	}
	added := false
	if _, err := p.s.do(p.ctx, "Add Attribute", id, &payloads.AddAttributeRequestPayload{UniqueIdentifier: id, Attribute: attr}); err != nil {
		p.set(CheckAddAttribute, No, "Add Attribute %q: %s", attr.AttributeName, reasonText(err))
	} else {
		added = true
		p.set(CheckAddAttribute, Yes, "added %q", attr.AttributeName)
	}
	if !added && !p.asiOK {
		p.set(CheckModifyAttribute, Skipped, "no attribute instance to modify")
		p.set(CheckDeleteAttribute, Skipped, "no attribute instance to delete")
		return
	}
	if !added {
		attr = asi // registered with object B
	}
	// Work on the last instance of the attribute.
	a, err := p.s.GetAttributes(p.ctx, id, string(attr.AttributeName))
	if err != nil || len(a.Raw) == 0 {
		p.set(CheckModifyAttribute, Unknown, "could not read %q back", attr.AttributeName)
		p.set(CheckDeleteAttribute, Unknown, "could not read %q back", attr.AttributeName)
		return
	}
	last := a.Raw[len(a.Raw)-1]
	mod := kmip.Attribute{AttributeName: attr.AttributeName, AttributeIndex: last.AttributeIndex, AttributeValue: modified(attr.AttributeValue)}
	if _, err := p.s.do(p.ctx, "Modify Attribute", id, &payloads.ModifyAttributeRequestPayload{UniqueIdentifier: id, Attribute: mod}); err != nil {
		p.set(CheckModifyAttribute, No, "Modify Attribute %q: %s", attr.AttributeName, reasonText(err))
	} else {
		p.set(CheckModifyAttribute, Yes, "modified %q", attr.AttributeName)
	}
	idx := int32(len(a.Raw) - 1)
	if last.AttributeIndex != nil {
		idx = *last.AttributeIndex
	}
	if err := p.s.DeleteAttribute(p.ctx, id, string(attr.AttributeName), idx); err != nil {
		p.set(CheckDeleteAttribute, No, "Delete Attribute %q: %s", attr.AttributeName, reasonText(err))
	} else {
		p.set(CheckDeleteAttribute, Yes, "deleted %q", attr.AttributeName)
	}
}

func modified(v any) any {
	switch x := v.(type) {
	case string:
		return x + "-modified"
	case kmip.ApplicationSpecificInformation:
		x.ApplicationData += "-modified"
		return x
	}
	return v
}

// refusal registers a probe object, sets attribute name to value (on the
// existing object, else at Register) and checks that Get is refused.
func (p *prober) refusal(check, short string, name kmip.AttributeName, value bool) {
	val, err := p.newSecret()
	if err != nil {
		p.set(check, Unknown, "%v", err)
		return
	}
	n := p.name(short)
	id, err := p.registerWith(n, val, p.baseAttrs()...)
	if err != nil {
		p.set(check, Unknown, "could not register a probe object: %s", reasonText(err))
		return
	}
	how := "set on the existing object"
	if err := p.setAndCheck(id, name, value); err != nil {
		setErr := err
		how = "given at Register"
		id, err = p.registerWith(n+"-r", val, append(p.baseAttrs(), kmip.Attribute{AttributeName: name, AttributeValue: value})...)
		if err != nil {
			p.set(check, No, "the server cannot set %s=%v: changing it failed (%s) and Register with it failed (%s)",
				name, value, reasonText(setErr), reasonText(err))
			return
		}
	}
	p.getRefused(check, id, fmt.Sprintf("%s=%v (%s)", name, value, how))
}

// setAndCheck sets a boolean attribute and reads it back: a server may
// accept a change it does not apply.
func (p *prober) setAndCheck(id string, name kmip.AttributeName, value bool) error {
	if err := p.s.SetAttribute(p.ctx, id, string(name), value); err != nil {
		return err
	}
	a, err := p.s.GetAttributes(p.ctx, id, string(name))
	if err != nil {
		return err
	}
	for _, at := range a.Raw {
		if at.AttributeName == name && at.AttributeValue == any(value) {
			return nil
		}
	}
	return fmt.Errorf("the change was accepted but Get Attributes does not show %s=%v", name, value)
}

// getRefused tries to Get id and records whether the server refused.
func (p *prober) getRefused(check, id, what string) {
	secs, errs, err := p.s.GetSecrets(p.ctx, []string{id})
	switch {
	case err != nil:
		p.set(check, Unknown, "Get failed as a whole: %s", reasonText(err))
	case errs[0] == nil:
		p.secrets = append(p.secrets, secs...)
		p.set(check, No, "the value was released for %s", what)
	case errors.Is(errs[0], ErrDenied):
		p.set(check, Yes, "Get refused for %s: %s", what, reasonText(errs[0]))
	default:
		p.set(check, Yes, "Get failed for %s: %s", what, reasonText(errs[0]))
	}
}

// cleanup destroys every probe object still present, revoking first
// those the server refuses to destroy (Active), in batched requests
// within its own bounded time, and returns those it could not destroy.
func (p *prober) cleanup() []string {
	if len(p.created) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(p.ctx), 10*time.Second)
	defer cancel()
	res, err := p.s.DestroyAll(ctx, p.created)
	if err != nil {
		return p.created
	}
	var active []string
	for _, i := range res.Failed() {
		if errors.Is(res[i].Err, ErrDenied) {
			active = append(active, res[i].ID)
		}
	}
	if len(active) > 0 {
		_, _ = p.s.RevokeAll(ctx, active, RevokeCessation, "sedboot capability probe cleanup")
		again, err := p.s.DestroyAll(ctx, active)
		for i := range again {
			if err == nil && again[i].Err == nil {
				j := slices.Index(p.created, again[i].ID)
				res[j].Err = nil
			}
		}
	}
	var left []string
	for _, i := range res.Failed() {
		left = append(left, res[i].ID)
	}
	return left
}

// reasonText shortens an error for a finding: the KMIP reason and
// message, or the error.
func reasonText(err error) string {
	var e *Error
	if errors.As(err, &e) {
		switch {
		case e.Reason != "" && e.Message != "":
			return e.Reason + ": " + e.Message
		case e.Reason != "":
			return e.Reason
		case e.Err != nil:
			return e.Err.Error()
		}
	}
	return err.Error()
}
