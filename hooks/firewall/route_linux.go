//go:build linux

package firewall

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func (e routeEntry) af() int {
	if e.family == 6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

func (e routeEntry) netlinkRule() *netlink.Rule {
	r := netlink.NewRule()
	r.Family = e.af()
	r.Mark = e.mark
	r.Table = int(e.table)
	if e.pref > 0 {
		r.Priority = e.pref
	}
	return r
}

func (e routeEntry) netlinkRoute() (*netlink.Route, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("the loopback interface: %w", err)
	}
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if e.family == 6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{
		Family:    e.af(),
		LinkIndex: lo.Attrs().Index,
		Dst:       dst,
		Table:     int(e.table),
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
		Protocol:  unix.RTPROT_BOOT, // what ip(8) sets
	}, nil
}

// lookup says whether the entry is there, and for a rule its priority.
func (e routeEntry) lookup() (bool, int, error) {
	if !e.route {
		rules, err := netlink.RuleListFiltered(e.af(), &netlink.Rule{Mark: e.mark, Table: int(e.table)}, netlink.RT_FILTER_MARK|netlink.RT_FILTER_TABLE)
		if err != nil || len(rules) == 0 {
			return false, 0, err
		}
		return true, rules[0].Priority, nil
	}
	routes, err := netlink.RouteListFiltered(e.af(), &netlink.Route{Table: int(e.table)}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return false, 0, err
	}
	for _, r := range routes {
		if r.Type != unix.RTN_LOCAL {
			continue
		}
		if r.Dst == nil {
			return true, 0, nil
		}
		if ones, _ := r.Dst.Mask.Size(); ones == 0 {
			return true, 0, nil
		}
	}
	return false, 0, nil
}

func (e routeEntry) present() (bool, error) {
	ok, _, err := e.lookup()
	return ok, err
}

func (e routeEntry) add() error {
	if !e.route {
		return netlink.RuleAdd(e.netlinkRule())
	}
	r, err := e.netlinkRoute()
	if err != nil {
		return err
	}
	return netlink.RouteAdd(r)
}

func (e routeEntry) del() error {
	var err error
	if !e.route {
		err = netlink.RuleDel(e.netlinkRule())
	} else {
		var r *netlink.Route
		if r, err = e.netlinkRoute(); err == nil {
			err = netlink.RouteDel(r)
		}
	}
	if isMissing(err) {
		// Gone already (taken away by hand): the goal is met.
		return nil
	}
	return err
}

// ensureRouting adds what the routing needs and is missing. It returns the
// record to keep and the entries added now (undone if the ruleset then
// fails to load). An entry the previous apply added stays funtun's.
func ensureRouting(want routing, prev *record) (*record, []routeEntry, error) {
	rec := &record{}
	if !want.needed() {
		return rec, nil, nil
	}
	rec.mark, rec.table = want.mark, want.table
	var added []routeEntry
	fail := func(e routeEntry, err error) (*record, []routeEntry, error) {
		err = fmt.Errorf("%s: %w", e, plainError(err))
		if errors.Is(err, errNeedsPrivilege) {
			err = errNeedsPrivilege
		}
		if undoErr := removeEntries(added); undoErr != nil {
			err = fmt.Errorf("%w; undoing what was added also failed: %v", err, undoErr)
		}
		return nil, nil, err
	}
	for _, e := range want.wanted() {
		there, pref, err := e.lookup()
		if err != nil {
			return fail(e, err)
		}
		if there {
			e.pref = pref
			if prev.has(e) {
				rec.entries = append(rec.entries, e)
			} else {
				rec.foreign = append(rec.foreign, e)
			}
			continue
		}
		if err := e.add(); err != nil {
			return fail(e, err)
		}
		if !e.route {
			// The kernel picked the priority; remove must name it.
			if _, pref, err := e.lookup(); err == nil {
				e.pref = pref
			}
		}
		added = append(added, e)
		rec.entries = append(rec.entries, e)
	}
	return rec, added, nil
}

func removeEntries(list []routeEntry) error {
	var errs []error
	for _, e := range list {
		if err := e.del(); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", e, plainError(err)))
		}
	}
	return errors.Join(errs...)
}
