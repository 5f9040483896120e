package kmsserver

import (
	"context"
	"errors"
	"path"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipserver"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"
	bolt "go.etcd.io/bbolt"

	"github.com/sedboot/sedboot/internal/kms"
)

// GroupGrant gives identities rights on every object of matching groups.
// Identity and Group are path.Match patterns ("array-*", "sedboot-SN*").
type GroupGrant struct {
	Identity string   `json:"identity"`
	Group    string   `json:"group"`
	Rights   []string `json:"rights"`
}

// Policy decides who may do what.
type Policy struct {
	// Admins are identity patterns with every right on every object.
	// Only they may change grants, set Extractable back to true or
	// Sensitive back to false. Get still obeys Extractable, Sensitive
	// and the object's state for them.
	Admins []string `json:"admins,omitempty"`
	// Registrars are identity patterns allowed to Register; empty allows
	// every authenticated client. The registering identity becomes the
	// object's owner and gets every right through a grant that an
	// administrator may later narrow or remove.
	Registrars []string `json:"registrars,omitempty"`
	// GroupGrants give rights per Object Group.
	GroupGrants []GroupGrant `json:"group_grants,omitempty"`
}

func (p *Policy) validate() error {
	check := func(where, pat string) error {
		if pat == "" {
			return errors.New(where + ": empty pattern")
		}
		if _, err := path.Match(pat, ""); err != nil {
			return errors.New(where + ": bad pattern " + strconv.Quote(pat))
		}
		return nil
	}
	for i, a := range p.Admins {
		if err := check("admins["+strconv.Itoa(i)+"]", a); err != nil {
			return err
		}
	}
	for i, a := range p.Registrars {
		if err := check("registrars["+strconv.Itoa(i)+"]", a); err != nil {
			return err
		}
	}
	for i, g := range p.GroupGrants {
		w := "group_grants[" + strconv.Itoa(i) + "]"
		if err := check(w+".identity", g.Identity); err != nil {
			return err
		}
		if err := check(w+".group", g.Group); err != nil {
			return err
		}
		if len(g.Rights) == 0 {
			return errors.New(w + ".rights: no rights")
		}
		for _, r := range g.Rights {
			if !slices.Contains(allRights, r) {
				return errors.New(w + ".rights: unknown right " + strconv.Quote(r) + " (want get, read or manage)")
			}
		}
	}
	return nil
}

func matchAny(pats []string, s string) bool {
	for _, p := range pats {
		if ok, _ := path.Match(p, s); ok {
			return true
		}
	}
	return false
}

// caller is the authenticated peer of a connection.
type caller struct {
	identity string
	remote   string
	// wipe holds key material handed to kmip-go for the last response on
	// this connection; it is zeroed when the next request arrives or the
	// connection closes (kmip-go encodes and sends the response after
	// the handler returns).
	mu   sync.Mutex
	wipe [][]byte
}

func (c *caller) keep(b []byte) {
	c.mu.Lock()
	c.wipe = append(c.wipe, b)
	c.mu.Unlock()
}

func (c *caller) wipeAll() {
	c.mu.Lock()
	for _, b := range c.wipe {
		clear(b)
	}
	c.wipe = nil
	c.mu.Unlock()
}

type ctxCaller struct{}

func withCaller(ctx context.Context, c *caller) context.Context {
	return context.WithValue(ctx, ctxCaller{}, c)
}

func callerOf(ctx context.Context) *caller {
	c, _ := ctx.Value(ctxCaller{}).(*caller)
	return c
}

// handler implements the KMIP operations over the store.
type handler struct {
	st     *store
	policy Policy
	now    func() time.Time
}

func (h *handler) isAdmin(identity string) bool { return matchAny(h.policy.Admins, identity) }

// rights returns what identity may do on o.
func (h *handler) rights(o *object, identity string) []string {
	if h.isAdmin(identity) {
		return allRights
	}
	rs := slices.Clone(o.grantFor(identity))
	for _, g := range h.policy.GroupGrants {
		if ok, _ := path.Match(g.Identity, identity); !ok {
			continue
		}
		for _, grp := range o.Groups {
			if ok, _ := path.Match(g.Group, grp); ok {
				rs = append(rs, g.Rights...)
			}
		}
	}
	return rs
}

// load reads object id for identity, requiring right. Without the read
// right the object does not exist for the caller.
func (h *handler) load(ctx context.Context, id, right string) (*object, *caller, error) {
	c := callerOf(ctx)
	if c == nil {
		return nil, nil, errf(kmip.ResultReasonAuthenticationNotSuccessful, "no authenticated client")
	}
	if id == "" {
		return nil, c, errf(kmip.ResultReasonMissingData, "unique identifier required (this server does not use the ID placeholder)")
	}
	o, err := h.st.get(id)
	if errors.Is(err, errNoObject) {
		return nil, c, notFound(id)
	}
	if err != nil {
		return nil, c, err
	}
	rs := h.rights(o, c.identity)
	if !slices.Contains(rs, RightRead) && !slices.Contains(rs, right) {
		return nil, c, notFound(id)
	}
	if !slices.Contains(rs, right) {
		return nil, c, denied("%s has no %s right on object %s", c.identity, right, id)
	}
	return o, c, nil
}

// mutate applies fn to object id under the manage right (or the admin
// role when adminOnly) inside one transaction.
func (h *handler) mutate(ctx context.Context, id string, fn func(o *object, c *caller) error) (*object, error) {
	if _, _, err := h.load(ctx, id, RightManage); err != nil {
		return nil, err
	}
	c := callerOf(ctx)
	o, err := h.st.update(id, func(_ *bolt.Tx, o *object) error {
		// Re-check inside the transaction: grants may have changed.
		if !slices.Contains(h.rights(o, c.identity), RightManage) {
			return denied("%s has no manage right on object %s", c.identity, id)
		}
		return fn(o, c)
	})
	if errors.Is(err, errNoObject) {
		return nil, notFound(id)
	}
	return o, err
}

func (h *handler) stamp() time.Time { return h.now().UTC().Truncate(time.Second) }

// route registers every operation on exec.
func (h *handler) route(exec *kmipserver.BatchExecutor) {
	exec.Route(kmip.OperationQuery, kmipserver.HandleFunc(h.query))
	exec.Route(kmip.OperationRegister, kmipserver.HandleFunc(h.register))
	exec.Route(kmip.OperationLocate, kmipserver.HandleFunc(h.locate))
	exec.Route(kmip.OperationGet, kmipserver.HandleFunc(h.get))
	exec.Route(kmip.OperationGetAttributes, kmipserver.HandleFunc(h.getAttributes))
	exec.Route(kmip.OperationGetAttributeList, kmipserver.HandleFunc(h.getAttributeList))
	exec.Route(kmip.OperationActivate, kmipserver.HandleFunc(h.activate))
	exec.Route(kmip.OperationRevoke, kmipserver.HandleFunc(h.revoke))
	exec.Route(kmip.OperationDestroy, kmipserver.HandleFunc(h.destroy))
	exec.Route(kmip.OperationAddAttribute, kmipserver.HandleFunc(h.addAttribute))
	exec.Route(kmip.OperationModifyAttribute, kmipserver.HandleFunc(h.modifyAttribute))
	exec.Route(kmip.OperationDeleteAttribute, kmipserver.HandleFunc(h.deleteAttribute))
}

var supportedOps = []kmip.Operation{
	kmip.OperationQuery, kmip.OperationDiscoverVersions, kmip.OperationRegister, kmip.OperationLocate,
	kmip.OperationGet, kmip.OperationGetAttributes, kmip.OperationGetAttributeList, kmip.OperationActivate,
	kmip.OperationRevoke, kmip.OperationDestroy, kmip.OperationAddAttribute, kmip.OperationModifyAttribute,
	kmip.OperationDeleteAttribute,
}

// Vendor is the Vendor Identification kmsd answers to Query.
const Vendor = "sedboot kmsd"

func (h *handler) query(ctx context.Context, req *payloads.QueryRequestPayload) (*payloads.QueryResponsePayload, error) {
	resp := &payloads.QueryResponsePayload{}
	for _, f := range req.QueryFunction {
		switch f {
		case kmip.QueryFunctionOperations:
			resp.Operations = supportedOps
		case kmip.QueryFunctionObjects:
			resp.ObjectType = []kmip.ObjectType{kmip.ObjectTypeSecretData}
		case kmip.QueryFunctionServerInformation:
			resp.VendorIdentification = Vendor
		}
	}
	return resp, nil
}

// applyAttribute sets one attribute on a new or existing object. It
// refuses server-managed attributes and kmsd's grant attributes (those
// go through addAttribute for administrators).
func (h *handler) applyAttribute(o *object, a kmip.Attribute, isNew bool) error {
	switch a.AttributeName {
	case kmip.AttributeNameName:
		n, ok := a.AttributeValue.(kmip.Name)
		if !ok || n.NameValue == "" {
			return errf(kmip.ResultReasonInvalidField, "Name: empty or malformed value")
		}
		if slices.Contains(o.Names, n.NameValue) {
			return errf(kmip.ResultReasonInvalidField, "Name %q is already set", n.NameValue)
		}
		o.Names = append(o.Names, n.NameValue)
	case kmip.AttributeNameObjectGroup:
		g, ok := a.AttributeValue.(string)
		if !ok || g == "" {
			return errf(kmip.ResultReasonInvalidField, "Object Group: empty or malformed value")
		}
		if !slices.Contains(o.Groups, g) {
			o.Groups = append(o.Groups, g)
		}
	case kmip.AttributeNameApplicationSpecificInformation:
		v, ok := a.AttributeValue.(kmip.ApplicationSpecificInformation)
		if !ok || v.ApplicationNamespace == "" {
			return errf(kmip.ResultReasonInvalidField, "Application Specific Information: namespace required")
		}
		o.AppInfo = append(o.AppInfo, appInfo{Namespace: v.ApplicationNamespace, Data: v.ApplicationData})
	case kmip.AttributeNameCryptographicUsageMask:
		m, ok := a.AttributeValue.(kmip.CryptographicUsageMask)
		if !ok {
			return errf(kmip.ResultReasonInvalidField, "Cryptographic Usage Mask: malformed value")
		}
		o.UsageMsk = uint32(m)
	case kmip.AttributeNameExtractable:
		v, ok := a.AttributeValue.(bool)
		if !ok {
			return errf(kmip.ResultReasonInvalidField, "Extractable: want a boolean")
		}
		o.Extractable = v
		if isNew {
			o.NeverExtractable = !v
		}
	case kmip.AttributeNameSensitive:
		v, ok := a.AttributeValue.(bool)
		if !ok {
			return errf(kmip.ResultReasonInvalidField, "Sensitive: want a boolean")
		}
		o.Sensitive = v
		if isNew {
			o.AlwaysSensitive = v
		}
	case kmip.AttributeNameActivationDate:
		t, ok := a.AttributeValue.(time.Time)
		if !ok || !isNew {
			return errf(kmip.ResultReasonInvalidField, "Activation Date: set it with Activate")
		}
		if !t.After(h.now()) {
			o.State = kmip.StateActive
			o.Activation = t.UTC()
		}
	default:
		if a.AttributeName.IsCustom() && a.AttributeName != AttrOwner && a.AttributeName != AttrGrant {
			c, err := encodeCustom(a.AttributeName, a.AttributeValue)
			if err != nil {
				return err
			}
			o.Custom = append(o.Custom, c)
			return nil
		}
		return errf(kmip.ResultReasonInvalidField, "attribute %q cannot be set by a client on this server", a.AttributeName)
	}
	return nil
}

func (h *handler) register(ctx context.Context, req *payloads.RegisterRequestPayload) (*payloads.RegisterResponsePayload, error) {
	c := callerOf(ctx)
	if c == nil {
		return nil, errf(kmip.ResultReasonAuthenticationNotSuccessful, "no authenticated client")
	}
	if len(h.policy.Registrars) > 0 && !matchAny(h.policy.Registrars, c.identity) {
		return nil, denied("%s may not register objects", c.identity)
	}
	sd, ok := req.Object.(*kmip.SecretData)
	if req.ObjectType != kmip.ObjectTypeSecretData || !ok {
		return nil, errf(kmip.ResultReasonFeatureNotSupported, "this server stores Secret Data only, not %s", ttlv.EnumStr(req.ObjectType))
	}
	kb := sd.KeyBlock
	if kb.KeyFormatType != kmip.KeyFormatTypeRaw && kb.KeyFormatType != kmip.KeyFormatTypeOpaque {
		return nil, errf(kmip.ResultReasonKeyFormatTypeNotSupported, "key format %s not supported (want Raw or Opaque)", ttlv.EnumStr(kb.KeyFormatType))
	}
	if kb.KeyWrappingData != nil || kb.KeyValue == nil || kb.KeyValue.Plain == nil || kb.KeyValue.Plain.KeyMaterial.Bytes == nil {
		return nil, errf(kmip.ResultReasonInvalidField, "Secret Data must carry a plain, unwrapped value")
	}
	material := *kb.KeyValue.Plain.KeyMaterial.Bytes
	defer clear(material)
	if len(material) == 0 || len(material) > 4096 {
		return nil, errf(kmip.ResultReasonInvalidField, "secret value must be 1 to 4096 bytes, got %d", len(material))
	}
	now := h.stamp()
	o := &object{
		ObjectType:     kmip.ObjectTypeSecretData,
		SecretDataType: uint32(sd.SecretDataType),
		KeyFormatType:  uint32(kb.KeyFormatType),
		Owner:          c.identity,
		Grants:         []grant{{Identity: c.identity, Rights: slices.Sorted(slices.Values(allRights))}},
		State:          kmip.StatePreActive,
		Extractable:    true,
		Initial:        now,
		LastChange:     now,
	}
	//lint:ignore SA1019 KMIP 1.0 to 1.2 clients send names here.
	for _, n := range req.TemplateAttribute.Name {
		if err := h.applyAttribute(o, kmip.Attribute{AttributeName: kmip.AttributeNameName, AttributeValue: n}, true); err != nil {
			return nil, err
		}
	}
	for _, a := range req.TemplateAttribute.Attribute {
		if err := h.applyAttribute(o, a, true); err != nil {
			return nil, err
		}
	}
	err := h.st.create(o, material, func(tx *bolt.Tx) error {
		for _, n := range o.Names {
			for _, id := range lookupTx(tx, bucketNames, n) {
				x, err := getTx(tx, id)
				if err != nil {
					return err
				}
				if x != nil && !x.destroyed() {
					return errf(kmip.ResultReasonInvalidField, "name %q is already in use", n)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &payloads.RegisterResponsePayload{UniqueIdentifier: o.ID}, nil
}

// matches reports whether o has every attribute of the Locate criteria.
func matches(o *object, crit []kmip.Attribute) (bool, error) {
	for _, a := range crit {
		switch a.AttributeName {
		case kmip.AttributeNameName:
			n, ok := a.AttributeValue.(kmip.Name)
			if !ok || !slices.Contains(o.Names, n.NameValue) {
				return false, nil
			}
		case kmip.AttributeNameObjectGroup:
			g, ok := a.AttributeValue.(string)
			if !ok || !slices.Contains(o.Groups, g) {
				return false, nil
			}
		case kmip.AttributeNameObjectType:
			t, ok := a.AttributeValue.(kmip.ObjectType)
			if !ok || t != o.ObjectType {
				return false, nil
			}
		case kmip.AttributeNameState:
			s, ok := a.AttributeValue.(kmip.State)
			if !ok || s != o.State {
				return false, nil
			}
		case kmip.AttributeNameApplicationSpecificInformation:
			v, ok := a.AttributeValue.(kmip.ApplicationSpecificInformation)
			if !ok || !slices.Contains(o.AppInfo, appInfo{Namespace: v.ApplicationNamespace, Data: v.ApplicationData}) {
				return false, nil
			}
		default:
			if !a.AttributeName.IsCustom() {
				return false, errf(kmip.ResultReasonInvalidField, "Locate by %q is not supported by this server", a.AttributeName)
			}
			want, ok := a.AttributeValue.(ttlv.Value)
			ws, isText := want.Value.(string)
			if !ok || !isText {
				return false, errf(kmip.ResultReasonInvalidField, "Locate by custom attribute %q: text values only", a.AttributeName)
			}
			found := false
			for _, c := range o.Custom {
				if c.Name == string(a.AttributeName) {
					if s, ok := customText(c); ok && s == ws {
						found = true
						break
					}
				}
			}
			if !found {
				return false, nil
			}
		}
	}
	return true, nil
}

func (h *handler) locate(ctx context.Context, req *payloads.LocateRequestPayload) (*payloads.LocateResponsePayload, error) {
	c := callerOf(ctx)
	if c == nil {
		return nil, errf(kmip.ResultReasonAuthenticationNotSuccessful, "no authenticated client")
	}
	if req.MaximumItems < 0 || req.OffsetItems < 0 {
		return nil, errf(kmip.ResultReasonInvalidField, "negative Maximum Items or Offset Items")
	}
	wantState := slices.ContainsFunc(req.Attribute, func(a kmip.Attribute) bool { return a.AttributeName == kmip.AttributeNameState })
	var ids []string
	err := h.candidates(req.Attribute, func(o *object) error {
		if o.destroyed() && !wantState {
			return nil
		}
		if !slices.Contains(h.rights(o, c.identity), RightRead) {
			return nil
		}
		ok, err := matches(o, req.Attribute)
		if err != nil {
			return err
		}
		if ok {
			ids = append(ids, o.ID)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(ids, func(i, j int) bool {
		a, _ := strconv.ParseUint(ids[i], 10, 64)
		b, _ := strconv.ParseUint(ids[j], 10, 64)
		return a < b
	})
	total := int32(len(ids))
	if off := int(req.OffsetItems); off > 0 {
		ids = ids[min(off, len(ids)):]
	}
	if req.MaximumItems > 0 && int(req.MaximumItems) < len(ids) {
		ids = ids[:req.MaximumItems]
	}
	resp := &payloads.LocateResponsePayload{UniqueIdentifier: ids}
	if ttlv.CompareVersions(kmipserver.GetProtocolVersion(ctx), kmip.V1_3) >= 0 {
		resp.LocatedItems = &total
	}
	return resp, nil
}

// candidates calls fn for the objects that may match crit: those indexed
// under its first Name, else its first Object Group, else all.
func (h *handler) candidates(crit []kmip.Attribute, fn func(*object) error) error {
	for _, ix := range []struct {
		name   kmip.AttributeName
		bucket []byte
	}{{kmip.AttributeNameName, bucketNames}, {kmip.AttributeNameObjectGroup, bucketGroups}} {
		for _, a := range crit {
			if a.AttributeName != ix.name {
				continue
			}
			var v string
			switch x := a.AttributeValue.(type) {
			case kmip.Name:
				v = x.NameValue
			case string:
				v = x
			default:
				return nil // malformed: matches nothing
			}
			objs, err := h.st.lookup(ix.bucket, v)
			if err != nil {
				return err
			}
			for _, o := range objs {
				if err := fn(o); err != nil {
					return err
				}
			}
			return nil
		}
	}
	return h.st.each(fn)
}

func (h *handler) get(ctx context.Context, req *payloads.GetRequestPayload) (*payloads.GetResponsePayload, error) {
	o, c, err := h.load(ctx, req.UniqueIdentifier, RightGet)
	if err != nil {
		return nil, err
	}
	switch {
	case o.destroyed():
		return nil, errf(kmip.ResultReasonItemNotFound, "object %s was destroyed", o.ID)
	case req.KeyWrappingSpecification != nil || req.KeyWrapType != 0:
		return nil, errf(kmip.ResultReasonFeatureNotSupported, "key wrapping is not supported")
	case req.KeyCompressionType != 0:
		return nil, errf(kmip.ResultReasonKeyCompressionTypeNotSupported, "key compression is not supported")
	case req.KeyFormatType != 0 && uint32(req.KeyFormatType) != o.KeyFormatType:
		return nil, errf(kmip.ResultReasonKeyFormatTypeNotSupported, "object %s is stored as %s; no conversion", o.ID, ttlv.EnumStr(kmip.KeyFormatType(o.KeyFormatType)))
	case o.State == kmip.StateDeactivated || o.State == kmip.StateCompromised:
		return nil, denied("object %s is %s; its value is no longer released", o.ID, stateName(o.State))
	case !o.Extractable:
		return nil, denied("object %s is not extractable", o.ID)
	case o.Sensitive:
		return nil, denied("object %s is sensitive; this server does not release it in plain and does not wrap", o.ID)
	}
	material, err := h.st.open(o.ID, o.Sealed)
	if err != nil {
		return nil, err
	}
	c.keep(material)
	return &payloads.GetResponsePayload{
		ObjectType:       kmip.ObjectTypeSecretData,
		UniqueIdentifier: o.ID,
		Object: &kmip.SecretData{
			SecretDataType: kmip.SecretDataType(o.SecretDataType),
			KeyBlock: kmip.KeyBlock{
				KeyFormatType: kmip.KeyFormatType(o.KeyFormatType),
				KeyValue:      &kmip.KeyValue{Plain: &kmip.PlainKeyValue{KeyMaterial: kmip.KeyMaterial{Bytes: &material}}},
			},
		},
	}, nil
}

func (h *handler) getAttributes(ctx context.Context, req *payloads.GetAttributesRequestPayload) (*payloads.GetAttributesResponsePayload, error) {
	o, _, err := h.load(ctx, req.UniqueIdentifier, RightRead)
	if err != nil {
		return nil, err
	}
	return &payloads.GetAttributesResponsePayload{UniqueIdentifier: o.ID, Attribute: o.attributes(req.AttributeName)}, nil
}

func (h *handler) getAttributeList(ctx context.Context, req *payloads.GetAttributeListRequestPayload) (*payloads.GetAttributeListResponsePayload, error) {
	o, _, err := h.load(ctx, req.UniqueIdentifier, RightRead)
	if err != nil {
		return nil, err
	}
	return &payloads.GetAttributeListResponsePayload{UniqueIdentifier: o.ID, AttributeName: o.attributeNames()}, nil
}

func (h *handler) activate(ctx context.Context, req *payloads.ActivateRequestPayload) (*payloads.ActivateResponsePayload, error) {
	o, err := h.mutate(ctx, req.UniqueIdentifier, func(o *object, _ *caller) error {
		if o.State != kmip.StatePreActive {
			return denied("object %s is %s, not Pre-Active", o.ID, stateName(o.State))
		}
		o.State = kmip.StateActive
		o.Activation = h.stamp()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &payloads.ActivateResponsePayload{UniqueIdentifier: o.ID}, nil
}

func (h *handler) revoke(ctx context.Context, req *payloads.RevokeRequestPayload) (*payloads.RevokeResponsePayload, error) {
	code := req.RevocationReason.RevocationReasonCode
	if code == 0 {
		return nil, errf(kmip.ResultReasonMissingData, "Revocation Reason Code required")
	}
	compromise := code == kmip.RevocationReasonCodeKeyCompromise || code == kmip.RevocationReasonCodeCACompromise
	o, err := h.mutate(ctx, req.UniqueIdentifier, func(o *object, _ *caller) error {
		switch {
		case o.destroyed():
			return errf(kmip.ResultReasonItemNotFound, "object %s was destroyed", o.ID)
		case compromise:
			if o.State == kmip.StateCompromised {
				return nil // repeated request: already done
			}
			o.State = kmip.StateCompromised
			o.Compromise = h.stamp()
			if req.CompromiseOccurrenceDate != nil {
				o.CompromiseO = req.CompromiseOccurrenceDate.UTC()
			} else {
				o.CompromiseO = o.Compromise
			}
		case o.State == kmip.StateDeactivated || o.State == kmip.StateCompromised:
			return nil // repeated request: already done
		default:
			o.State = kmip.StateDeactivated
			o.Deactivate = h.stamp()
		}
		o.RevocationCode = uint32(code)
		o.RevocationMessage = req.RevocationReason.RevocationMessage
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &payloads.RevokeResponsePayload{UniqueIdentifier: o.ID}, nil
}

func (h *handler) destroy(ctx context.Context, req *payloads.DestroyRequestPayload) (*payloads.DestroyResponsePayload, error) {
	o, err := h.mutate(ctx, req.UniqueIdentifier, func(o *object, _ *caller) error {
		switch o.State {
		case kmip.StateActive:
			return denied("object %s is Active; revoke it before destroying it", o.ID)
		case kmip.StateDestroyed, kmip.StateDestroyedCompromised:
			return errf(kmip.ResultReasonItemNotFound, "object %s was already destroyed", o.ID)
		case kmip.StateCompromised:
			o.State = kmip.StateDestroyedCompromised
		default:
			o.State = kmip.StateDestroyed
		}
		o.Sealed = nil
		o.Destroyed = h.stamp()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &payloads.DestroyResponsePayload{UniqueIdentifier: o.ID}, nil
}

// grantChange applies an Add/Modify/Delete of AttrGrant; administrators
// only.
func (h *handler) grantChange(c *caller, o *object, value any, remove bool) error {
	if !h.isAdmin(c.identity) {
		return denied("only an administrator may change grants")
	}
	s, ok := kms.TextValue(value)
	if !ok {
		return errf(kmip.ResultReasonInvalidField, "%s: want a text value IDENTITY=rights", AttrGrant)
	}
	g, err := parseGrant(s)
	if err != nil {
		return err
	}
	if remove {
		g.Rights = nil
	}
	o.setGrant(g)
	return nil
}

// flagChange enforces the one-way rules of Extractable and Sensitive for
// non-administrators.
func (h *handler) flagChange(c *caller, o *object, a kmip.Attribute) error {
	v, ok := a.AttributeValue.(bool)
	if !ok {
		return errf(kmip.ResultReasonInvalidField, "%s: want a boolean", a.AttributeName)
	}
	admin := h.isAdmin(c.identity)
	switch a.AttributeName {
	case kmip.AttributeNameExtractable:
		if v && !o.Extractable && !admin {
			return denied("only an administrator may make object %s extractable again", o.ID)
		}
		// Never Extractable keeps recording the past.
		o.Extractable = v
	case kmip.AttributeNameSensitive:
		if !v && o.Sensitive && !admin {
			return denied("only an administrator may clear Sensitive on object %s", o.ID)
		}
		o.Sensitive = v
		if !v {
			o.AlwaysSensitive = false
		}
	}
	return nil
}

func (h *handler) addAttribute(ctx context.Context, req *payloads.AddAttributeRequestPayload) (*payloads.AddAttributeResponsePayload, error) {
	a := req.Attribute
	var idx int
	o, err := h.mutate(ctx, req.UniqueIdentifier, func(o *object, c *caller) error {
		if o.destroyed() {
			return errf(kmip.ResultReasonItemNotFound, "object %s was destroyed", o.ID)
		}
		switch {
		case a.AttributeName == AttrGrant:
			return h.grantChange(c, o, a.AttributeValue, false)
		case a.AttributeName == kmip.AttributeNameExtractable, a.AttributeName == kmip.AttributeNameSensitive:
			return h.flagChange(c, o, a)
		}
		before := len(o.attributes([]kmip.AttributeName{a.AttributeName}))
		if err := h.applyAttribute(o, a, false); err != nil {
			return err
		}
		idx = before
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := a
	if idx > 0 || isMulti(a.AttributeName) {
		i := int32(idx)
		out.AttributeIndex = &i
	}
	return &payloads.AddAttributeResponsePayload{UniqueIdentifier: o.ID, Attribute: out}, nil
}

func isMulti(n kmip.AttributeName) bool {
	return n == kmip.AttributeNameName || n == kmip.AttributeNameObjectGroup ||
		n == kmip.AttributeNameApplicationSpecificInformation || n.IsCustom()
}

func index(a kmip.Attribute) int {
	if a.AttributeIndex == nil {
		return 0
	}
	return int(*a.AttributeIndex)
}

func (h *handler) modifyAttribute(ctx context.Context, req *payloads.ModifyAttributeRequestPayload) (*payloads.ModifyAttributeResponsePayload, error) {
	a := req.Attribute
	o, err := h.mutate(ctx, req.UniqueIdentifier, func(o *object, c *caller) error {
		if o.destroyed() {
			return errf(kmip.ResultReasonItemNotFound, "object %s was destroyed", o.ID)
		}
		i := index(a)
		switch {
		case a.AttributeName == AttrGrant:
			return h.grantChange(c, o, a.AttributeValue, false)
		case a.AttributeName == kmip.AttributeNameExtractable, a.AttributeName == kmip.AttributeNameSensitive:
			return h.flagChange(c, o, a)
		case a.AttributeName == kmip.AttributeNameName:
			n, ok := a.AttributeValue.(kmip.Name)
			if !ok || n.NameValue == "" || i < 0 || i >= len(o.Names) {
				return errf(kmip.ResultReasonInvalidField, "Name index %d: no such instance or bad value", i)
			}
			o.Names[i] = n.NameValue
		case a.AttributeName == kmip.AttributeNameObjectGroup:
			g, ok := a.AttributeValue.(string)
			if !ok || g == "" || i < 0 || i >= len(o.Groups) {
				return errf(kmip.ResultReasonInvalidField, "Object Group index %d: no such instance or bad value", i)
			}
			o.Groups[i] = g
		case a.AttributeName == kmip.AttributeNameApplicationSpecificInformation:
			v, ok := a.AttributeValue.(kmip.ApplicationSpecificInformation)
			if !ok || i < 0 || i >= len(o.AppInfo) {
				return errf(kmip.ResultReasonInvalidField, "Application Specific Information index %d: no such instance or bad value", i)
			}
			o.AppInfo[i] = appInfo{Namespace: v.ApplicationNamespace, Data: v.ApplicationData}
		case a.AttributeName.IsCustom() && a.AttributeName != AttrOwner:
			n := -1
			for j := range o.Custom {
				if o.Custom[j].Name == string(a.AttributeName) {
					n++
					if n == i {
						ca, err := encodeCustom(a.AttributeName, a.AttributeValue)
						if err != nil {
							return err
						}
						o.Custom[j] = ca
						return nil
					}
				}
			}
			return errf(kmip.ResultReasonItemNotFound, "attribute %q index %d not present", a.AttributeName, i)
		default:
			return errf(kmip.ResultReasonInvalidField, "attribute %q cannot be modified on this server", a.AttributeName)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &payloads.ModifyAttributeResponsePayload{UniqueIdentifier: o.ID, Attribute: a}, nil
}

func (h *handler) deleteAttribute(ctx context.Context, req *payloads.DeleteAttributeRequestPayload) (*payloads.DeleteAttributeResponsePayload, error) {
	name := req.AttributeName
	i := 0
	if req.AttributeIndex != nil {
		i = int(*req.AttributeIndex)
	}
	var deleted kmip.Attribute
	o, err := h.mutate(ctx, req.UniqueIdentifier, func(o *object, c *caller) error {
		cur := o.attributes([]kmip.AttributeName{name})
		if i < 0 || i >= len(cur) {
			return errf(kmip.ResultReasonItemNotFound, "attribute %q index %d not present", name, i)
		}
		deleted = cur[i]
		switch {
		case name == AttrGrant:
			return h.grantChange(c, o, cur[i].AttributeValue, true)
		case name == kmip.AttributeNameName:
			o.Names = slices.Delete(o.Names, i, i+1)
		case name == kmip.AttributeNameObjectGroup:
			o.Groups = slices.Delete(o.Groups, i, i+1)
		case name == kmip.AttributeNameApplicationSpecificInformation:
			o.AppInfo = slices.Delete(o.AppInfo, i, i+1)
		case name.IsCustom() && name != AttrOwner:
			n := -1
			for j := range o.Custom {
				if o.Custom[j].Name == string(name) {
					n++
					if n == i {
						o.Custom = slices.Delete(o.Custom, j, j+1)
						return nil
					}
				}
			}
		default:
			return errf(kmip.ResultReasonInvalidField, "attribute %q cannot be deleted", name)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &payloads.DeleteAttributeResponsePayload{UniqueIdentifier: o.ID, Attribute: deleted}, nil
}
