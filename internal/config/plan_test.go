package config

import (
	"fmt"
	"testing"
)

func gen(n int, state string, drives ...string) Generation {
	g := Generation{Number: n, State: state}
	for _, d := range drives {
		g.Drives = append(g.Drives, DriveKey{Drive: d, Name: fmt.Sprintf("k-%d-%s", n, d)})
	}
	return g
}

func TestCandidates(t *testing.T) {
	tests := []struct {
		name    string
		gens    []Generation
		journal *Journal
		drive   string
		want    []int
	}{
		{"not enabled", nil, nil, "D1", nil},
		{"steady state", []Generation{gen(1, GenRetired, "D1"), gen(2, GenActive, "D1", "D2")}, nil, "D1", []int{2}},
		{"unknown drive", []Generation{gen(2, GenActive, "D1")}, nil, "D9", nil},
		{"enable interrupted", []Generation{gen(1, GenPending, "D1")},
			&Journal{Op: "enable", To: 1, Step: "drives"}, "D1", []int{1}},
		{"rotation, drive untouched", []Generation{gen(1, GenActive, "D1"), gen(2, GenPending, "D1")},
			&Journal{Op: "rotate", From: 1, To: 2, Step: "drives"}, "D1", []int{1, 2}},
		{"rotation, drive changing", []Generation{gen(1, GenActive, "D1"), gen(2, GenPending, "D1")},
			&Journal{Op: "rotate", From: 1, To: 2, Step: "drives", Drives: map[string]string{"D1": DriveChanging}}, "D1", []int{2, 1}},
		{"rotation, drive changed", []Generation{gen(1, GenActive, "D1"), gen(2, GenPending, "D1")},
			&Journal{Op: "rotate", From: 1, To: 2, Step: "drives", Drives: map[string]string{"D1": DriveChanged}}, "D1", []int{2, 1}},
		{"rotation done, retiring", []Generation{gen(1, GenRetiring, "D1"), gen(2, GenActive, "D1")},
			&Journal{Op: "rotate", From: 1, To: 2, Step: "retire", Drives: map[string]string{"D1": DriveChanged}}, "D1", []int{2, 1}},
		{"retired never offered", []Generation{gen(1, GenRetired, "D1"), gen(2, GenActive, "D1")},
			&Journal{Op: "rotate", From: 1, To: 2, Step: "retire"}, "D1", []int{2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := &Document{Keys: Inventory{Generations: tc.gens}, Journal: tc.journal}
			var got []int
			for _, c := range d.Candidates(tc.drive) {
				got = append(got, c.Generation)
				if c.Name != fmt.Sprintf("k-%d-%s", c.Generation, tc.drive) {
					t.Errorf("candidate of generation %d names key %q", c.Generation, c.Name)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("Candidates(%s) = %v, want %v", tc.drive, got, tc.want)
			}
		})
	}
}

func TestInventoryDrives(t *testing.T) {
	inv := Inventory{Generations: []Generation{gen(1, GenRetired, "OLD"), gen(2, GenActive, "D1", "D2"), gen(3, GenPending, "D2", "D3")}}
	if got := fmt.Sprint(inv.Drives()); got != "[D1 D2 D3]" {
		t.Fatalf("Drives = %s", got)
	}
	if inv.Active().Number != 2 || inv.Generation(3).State != GenPending || inv.Generation(9) != nil {
		t.Fatal("Active/Generation lookups wrong")
	}
}
