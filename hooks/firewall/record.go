package firewall

import (
	"fmt"
	"strconv"
	"strings"
)

// routeEntry is one ip rule or route that tproxy needs.
type routeEntry struct {
	family int    // 4 or 6
	route  bool   // the local default route; else the fwmark rule
	mark   uint32 // of the rule
	table  uint32
	pref   int // the rule's priority as the kernel chose it; 0 if unknown
}

func (e routeEntry) String() string {
	if e.route {
		dst := "0.0.0.0/0"
		if e.family == 6 {
			dst = "::/0"
		}
		return fmt.Sprintf("ip -%d route local %s dev lo table %d", e.family, dst, e.table)
	}
	s := fmt.Sprintf("ip -%d rule fwmark 0x%x lookup %d", e.family, e.mark, e.table)
	if e.pref > 0 {
		s += fmt.Sprintf(" pref %d", e.pref)
	}
	return s
}

// same ignores a rule's priority (it is the same rule wherever it sits)
// and a route's mark (only the rule has one).
func (e routeEntry) same(o routeEntry) bool {
	if e.family != o.family || e.route != o.route || e.table != o.table {
		return false
	}
	return e.route || e.mark == o.mark
}

func containsEntry(list []routeEntry, e routeEntry) bool {
	for _, x := range list {
		if x.same(e) {
			return true
		}
	}
	return false
}

// wanted lists the entries a plan's routing needs.
func (r routing) wanted() []routeEntry {
	var out []routeEntry
	for _, fam := range []int{4, 6} {
		if fam == 4 && !r.v4 || fam == 6 && !r.v6 {
			continue
		}
		out = append(out,
			routeEntry{family: fam, mark: r.mark, table: r.table},
			routeEntry{family: fam, route: true, mark: r.mark, table: r.table})
	}
	return out
}

// record is what apply keeps in the table about the routing: the entries
// it added (remove takes those away) and those it found already there
// (left alone).
type record struct {
	mark, table uint32
	entries     []routeEntry
	foreign     []routeEntry
}

func (r *record) has(e routeEntry) bool { return containsEntry(r.entries, e) }

const recordPrefix = "funtun routing v1:"

// String is the record as a rule comment, short enough for nft's 128
// characters: "funtun routing v1: mark=0x6675 table=26228
// ours=rule4@32765,route4 theirs=rule6,route6".
func (r *record) String() string {
	word := func(e routeEntry) string {
		if e.route {
			return fmt.Sprintf("route%d", e.family)
		}
		if e.pref > 0 {
			return fmt.Sprintf("rule%d@%d", e.family, e.pref)
		}
		return fmt.Sprintf("rule%d", e.family)
	}
	list := func(es []routeEntry) string {
		var ws []string
		for _, e := range es {
			ws = append(ws, word(e))
		}
		return strings.Join(ws, ",")
	}
	return fmt.Sprintf("%s mark=0x%x table=%d ours=%s theirs=%s", recordPrefix, r.mark, r.table, list(r.entries), list(r.foreign))
}

func parseRecord(s string) (*record, error) {
	bad := func(why string) error {
		return fmt.Errorf("its routing record %q is damaged (%s): remove the routing by hand", s, why)
	}
	r := &record{}
	for _, f := range strings.Fields(strings.TrimPrefix(s, recordPrefix)) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "mark", "table":
			n, err := strconv.ParseUint(v, 0, 32)
			if err != nil {
				return nil, bad(k)
			}
			if k == "mark" {
				r.mark = uint32(n)
			} else {
				r.table = uint32(n)
			}
		case "ours", "theirs":
			if v == "" {
				continue
			}
			for _, w := range strings.Split(v, ",") {
				e := routeEntry{}
				w, pref, hasPref := strings.Cut(w, "@")
				switch w {
				case "rule4", "rule6":
				case "route4", "route6":
					e.route = true
				default:
					return nil, bad(w)
				}
				e.family = int(w[len(w)-1] - '0')
				if hasPref {
					n, err := strconv.Atoi(pref)
					if err != nil || n < 0 {
						return nil, bad(pref)
					}
					e.pref = n
				}
				if k == "ours" {
					r.entries = append(r.entries, e)
				} else {
					r.foreign = append(r.foreign, e)
				}
			}
		default:
			return nil, bad(k)
		}
	}
	if r.mark == 0 || r.table == 0 {
		return nil, bad("no mark or table")
	}
	for _, es := range [][]routeEntry{r.entries, r.foreign} {
		for i := range es {
			es[i].mark, es[i].table = r.mark, r.table
		}
	}
	return r, nil
}
