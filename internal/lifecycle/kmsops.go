package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/keys"
	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/secret"
)

// keySet holds key values by key name; Zero wipes them all.
type keySet map[string]*secret.Secret

func (ks keySet) zero() {
	for n, s := range ks {
		s.Zero()
		delete(ks, n)
	}
}

// conns holds one connection per server for one identity.
type conns struct {
	a     *Array
	order []string
	by    map[string]*kms.Conn
}

// connectAll connects client to every configured server; every server
// must answer.
func (a *Array) connectAll(ctx context.Context, client *kms.Client, who string) (*conns, error) {
	cs := &conns{a: a, by: map[string]*kms.Conn{}}
	for _, srv := range client.Servers() {
		c, err := a.connect(ctx, client, srv)
		if err != nil {
			cs.close()
			return nil, fmt.Errorf("connect to key server %s as the %s: %w", srv.Label(), who, err)
		}
		cs.order = append(cs.order, srv.Label())
		cs.by[srv.Label()] = c
	}
	return cs, nil
}

func (a *Array) connect(ctx context.Context, client *kms.Client, srv kms.Server) (*kms.Conn, error) {
	c, err := client.Connect(ctx, srv)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.kmsStats.Connections++
	a.mu.Unlock()
	return c, nil
}

// release closes a connection and counts its requests.
func (a *Array) release(c *kms.Conn) {
	if c == nil {
		return
	}
	a.mu.Lock()
	a.kmsStats.Requests += c.Requests()
	a.mu.Unlock()
	_ = c.Close()
}

func (cs *conns) close() {
	if cs == nil {
		return
	}
	for _, l := range cs.order {
		cs.a.release(cs.by[l])
	}
	cs.by = map[string]*kms.Conn{}
	cs.order = nil
}

// countReport adds what a Fetch did to the statistics.
func (a *Array) countReport(r *kms.Report) {
	if r == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, at := range r.Attempts {
		if at.KMIPVersion != "" {
			a.kmsStats.Connections++
		}
		a.kmsStats.Requests += at.Requests
	}
}

// ensureKeys makes every key of generation g present, with one value, on
// every configured key server, and fetchable by the array's identity. It
// is idempotent: a key a server already holds (from an interrupted earlier
// run, or restored) keeps its value, and is registered with that value on
// the servers that lack it. given supplies values for keys that no server
// holds (a backup being restored); without it such keys get new random
// values. The per-server identifiers are recorded in g. The returned keys
// are the caller's to zero.
func (a *Array) ensureKeys(ctx context.Context, g *config.Generation, given keySet, activate bool) (_ keySet, err error) {
	if a.Admin == nil {
		return nil, errors.New("no administrator key-server client")
	}
	admin, err := a.connectAll(ctx, a.Admin, "administrator")
	if err != nil {
		return nil, err
	}
	defer admin.close()

	names := make([]string, len(g.Drives))
	for i, dk := range g.Drives {
		names[i] = dk.Name
	}
	group := a.group()
	values := keySet{}
	defer func() {
		if err != nil {
			values.zero()
		}
	}()

	// Which server holds which key already, and with which value?
	for _, srv := range admin.order {
		c := admin.by[srv]
		ids, errs, err := c.LocateNames(ctx, group, names)
		if err != nil {
			return nil, fmt.Errorf("look up generation %d keys on %s: %w", g.Number, srv, err)
		}
		var have []string
		var haveNames []string
		for i, e := range errs {
			switch {
			case e == nil:
				have = append(have, ids[i])
				haveNames = append(haveNames, names[i])
			case errors.Is(e, kms.ErrNotFound):
			default:
				return nil, fmt.Errorf("look up key %s on %s: %w", names[i], srv, e)
			}
		}
		if len(have) == 0 {
			continue
		}
		secs, gerrs, err := c.GetSecrets(ctx, have)
		if err != nil {
			return nil, fmt.Errorf("read existing generation %d keys on %s: %w", g.Number, srv, err)
		}
		for j, s := range secs {
			name := haveNames[j]
			if gerrs[j] != nil {
				return nil, fmt.Errorf("key %s exists on %s (id %s) but the administrator cannot read it (%w); if it is locked run 'sedctl unlock', if it is a leftover destroy it",
					name, srv, have[j], gerrs[j])
			}
			if prev, ok := values[name]; ok {
				same := prev.Equal(s)
				s.Zero()
				if !same {
					return nil, fmt.Errorf("%w: %s differs between key servers (now at %s)", ErrKeyConflict, name, srv)
				}
				continue
			}
			if gv := given[name]; gv != nil && !gv.Equal(s) {
				s.Zero()
				return nil, fmt.Errorf("%w: %s on %s (id %s) is not the key being restored; destroy that object first", ErrKeyConflict, name, srv, have[j])
			}
			values[name] = s
		}
	}
	for _, n := range names {
		if values[n] != nil {
			continue
		}
		var v *secret.Secret
		if gv := given[n]; gv != nil {
			v, err = gv.Clone()
		} else {
			v, err = secret.Random(keys.KeySize)
		}
		if err != nil {
			return nil, fmt.Errorf("key %s: %w", n, err)
		}
		values[n] = v
	}

	// Register what each server lacks (RegisterAll skips existing names).
	specs := make([]kms.SecretSpec, len(g.Drives))
	for i, dk := range g.Drives {
		specs[i] = kms.SecretSpec{
			Name: dk.Name, Group: group, Value: values[dk.Name], Activate: activate,
			Metadata: map[string]string{"array": a.Doc.Array.Serial, "generation": strconv.Itoa(g.Number), "drive": dk.Drive},
		}
	}
	for _, srv := range admin.order {
		res, err := admin.by[srv].RegisterAll(ctx, specs)
		if err != nil {
			return nil, fmt.Errorf("register generation %d keys on %s: %w", g.Number, srv, err)
		}
		created := 0
		for i, r := range res {
			if r.Err != nil {
				return nil, fmt.Errorf("register key %s on %s: %w", specs[i].Name, srv, r.Err)
			}
			if r.Created {
				created++
			}
			dk := &g.Drives[i]
			if dk.IDs == nil {
				dk.IDs = map[string]string{}
			}
			dk.IDs[srv] = r.ID
		}
		a.progress(StepRegister, "", srv, "generation %d: %d keys registered, %d already present", g.Number, created, len(res)-created)
		if err := a.hook("registered on " + srv); err != nil {
			return nil, err
		}
	}
	if err := a.proveAgent(ctx, g, values, admin); err != nil {
		return nil, err
	}
	return values, nil
}

// proveAgent checks, on every server, that the array's identity obtains
// exactly the values of g's keys, granting it access on servers with
// kmsd-style grants where it lacks it.
func (a *Array) proveAgent(ctx context.Context, g *config.Generation, values keySet, admin *conns) error {
	client, err := a.agent()
	if err != nil {
		return err
	}
	ident, err := ArrayIdentity(a.Doc)
	if err != nil {
		return err
	}
	for _, srv := range admin.order {
		ac, err := a.connect(ctx, client, serverByLabel(client, srv))
		if err != nil {
			return fmt.Errorf("connect to key server %s as the array identity %q: %w", srv, ident, err)
		}
		denied, err := a.agentGets(ctx, ac, g, values, srv)
		if err == nil && len(denied) > 0 {
			// Grant where the server supports grants, then try again.
			if gerr := a.grant(ctx, admin.by[srv], g, denied, srv, ident, "get,read"); gerr != nil {
				a.release(ac)
				return fmt.Errorf("%w on %s: %d key(s) refused to %q (%s), and granting access failed: %w; %s",
					ErrAgentDenied, srv, len(denied), ident, strings.Join(denied[:min(len(denied), 3)], ", "), gerr, grantAdvice(ident, a.group()))
			}
			denied, err = a.agentGets(ctx, ac, g, values, srv)
		}
		a.release(ac)
		if err != nil {
			return err
		}
		if len(denied) > 0 {
			return fmt.Errorf("%w on %s: %d key(s) refused to %q even after granting access; %s", ErrAgentDenied, srv, len(denied), ident, grantAdvice(ident, a.group()))
		}
		a.progress(StepRegister, "", srv, "array identity %q fetches all %d keys of generation %d", ident, len(g.Drives), g.Number)
	}
	return nil
}

func grantAdvice(ident, group string) string {
	return fmt.Sprintf("the boot agent could not fetch these keys: give the identity %q the right to Get the objects of group %q on that server (with kmsd: a group grant in its policy, or run this tool with an administrator identity; with PyKMIP, which lets only an object's owner Get it: run this tool with the array's own certificate)", ident, group)
}

func serverByLabel(c *kms.Client, label string) kms.Server {
	for _, s := range c.Servers() {
		if s.Label() == label {
			return s
		}
	}
	return kms.Server{Name: label}
}

// agentGets fetches g's keys from one server with the array identity's
// connection and compares them with values. It returns the names the
// server refused; a released value that differs is a conflict.
func (a *Array) agentGets(ctx context.Context, ac *kms.Conn, g *config.Generation, values keySet, srv string) ([]string, error) {
	ids := make([]string, len(g.Drives))
	for i, dk := range g.Drives {
		ids[i] = dk.IDs[srv]
	}
	secs, errs, err := ac.GetSecrets(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("fetch generation %d keys from %s as the array identity: %w", g.Number, srv, err)
	}
	var denied []string
	for i, s := range secs {
		name := g.Drives[i].Name
		if errs[i] != nil {
			if errors.Is(errs[i], kms.ErrDenied) || errors.Is(errs[i], kms.ErrNotFound) {
				denied = append(denied, name)
				continue
			}
			return nil, fmt.Errorf("fetch key %s from %s as the array identity: %w", name, srv, errs[i])
		}
		same := values[name] != nil && values[name].Equal(s)
		s.Zero()
		if !same {
			return nil, fmt.Errorf("%w: %s as released to the array identity by %s", ErrKeyConflict, name, srv)
		}
	}
	return denied, nil
}

// grant sets ident's rights on the keys named in names (kmsd only), in
// one batched request.
func (a *Array) grant(ctx context.Context, c *kms.Conn, g *config.Generation, names []string, srv, ident, rights string) error {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var ids, keyNames []string
	for _, dk := range g.Drives {
		if want[dk.Name] {
			ids = append(ids, dk.IDs[srv])
			keyNames = append(keyNames, dk.Name)
		}
	}
	res, err := c.AddAttributeAll(ctx, ids, kms.GrantAttribute, ident+"="+rights)
	if err != nil {
		return err
	}
	return keyErrors(res, keyNames, nil)
}

// keyErrors returns nil when every item of a batched operation is done
// (or failed with an error ignore accepts), else an error naming each
// failed key by name.
func keyErrors(res kms.Results, names []string, ignore func(error) bool) error {
	var errs []error
	for _, i := range res.Failed() {
		if ignore != nil && ignore(res[i].Err) {
			continue
		}
		errs = append(errs, fmt.Errorf("key %s: %w", names[i], res[i].Err))
	}
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	return &kms.ItemsError{Total: len(res), Errs: errs}
}

// notFound reports a key the server no longer holds.
func notFound(err error) bool { return errors.Is(err, kms.ErrNotFound) }

// fetchAdmin fetches g's keys with the administrator's identity (failing
// over between servers) and returns them by name.
func (a *Array) fetchAdmin(ctx context.Context, g *config.Generation) (keySet, error) {
	if a.Admin == nil {
		return nil, errors.New("no administrator key-server client")
	}
	req := kms.FetchRequest{Group: a.group()}
	for _, dk := range g.Drives {
		req.Keys = append(req.Keys, kms.KeyRef{Name: dk.Name, IDs: dk.IDs})
	}
	res, err := a.Admin.Fetch(ctx, req)
	if res != nil {
		a.countReport(res.Report)
	}
	if err != nil {
		if res != nil {
			res.Zero()
		}
		return nil, fmt.Errorf("fetch generation %d keys: %w", g.Number, err)
	}
	ks := keySet{}
	for n, s := range res.Secrets {
		ks[n] = s
	}
	return ks, nil
}
