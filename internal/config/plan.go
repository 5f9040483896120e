package config

// KeyRef is one drive key of one generation, as the agent asks for it.
type KeyRef struct {
	Generation int
	DriveKey
}

// Generation returns the inventory's generation n, or nil.
func (inv *Inventory) Generation(n int) *Generation {
	for i := range inv.Generations {
		if inv.Generations[i].Number == n {
			return &inv.Generations[i]
		}
	}
	return nil
}

// Active returns the generation in use, or nil when there is none (the
// array is not enabled, or enabling has not finished).
func (inv *Inventory) Active() *Generation {
	var best *Generation
	for i := range inv.Generations {
		g := &inv.Generations[i]
		if g.State == GenActive && (best == nil || g.Number > best.Number) {
			best = g
		}
	}
	return best
}

// Key returns drive's key in generation g, if the generation lists it.
func (g *Generation) Key(drive string) (DriveKey, bool) {
	for _, dk := range g.Drives {
		if dk.Drive == drive {
			return dk, true
		}
	}
	return DriveKey{}, false
}

// Candidates returns the keys that may open drive, most likely first.
// Normally that is the active generation's key alone. While an operation
// is journaled, the drive may hold the generation being installed or the
// one being replaced: the journal's record of the drive orders them (a
// drive marked changing or changed tries the new generation first). The
// drive's key verifier decides between them without an Opal try, so the
// order only matters if the verifier is itself ambiguous.
func (d *Document) Candidates(drive string) []KeyRef {
	var gens []int
	if j := d.Journal; j != nil {
		switch j.Drives[drive] {
		case DriveChanging, DriveChanged:
			gens = append(gens, j.To, j.From)
		default:
			gens = append(gens, j.From, j.To)
		}
	}
	if a := d.Keys.Active(); a != nil {
		gens = append(gens, a.Number)
	}
	var out []KeyRef
	seen := map[int]bool{}
	for _, n := range gens {
		if n < 1 || seen[n] {
			continue
		}
		seen[n] = true
		g := d.Keys.Generation(n)
		if g == nil || g.State == GenRetired {
			continue
		}
		if dk, ok := g.Key(drive); ok {
			out = append(out, KeyRef{Generation: n, DriveKey: dk})
		}
	}
	return out
}

// Drives returns the serials of every drive the inventory holds keys for,
// in first-seen order.
func (inv *Inventory) Drives() []string {
	var out []string
	seen := map[string]bool{}
	for _, g := range inv.Generations {
		if g.State == GenRetired {
			continue
		}
		for _, dk := range g.Drives {
			if !seen[dk.Drive] {
				seen[dk.Drive] = true
				out = append(out, dk.Drive)
			}
		}
	}
	return out
}
