//go:build linux

package firewall

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// recordChain holds, as the comment of its only rule, which routing
// entries apply added. Keeping the record in the table itself (rather
// than a file under /run) ties it to the network namespace the rules are
// in, and it disappears with them.
const recordChain = "routes"

// plainError turns netlink's errno into something a user acts on.
func plainError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return errNeedsPrivilege
	case errors.Is(err, unix.ENETDOWN):
		return fmt.Errorf("%v: the loopback interface must be up for tproxy's local route (ip link set lo up)", err)
	case errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.EAFNOSUPPORT):
		return fmt.Errorf("this kernel has no nf_tables (%v)", err)
	}
	return err
}

// tableOwner is NFT_TABLE_F_OWNER: the table belongs to the netlink socket
// of the program that made it, and only that program may change it.
const tableOwner = 0x2

// ownedError explains the EPERM that root gets for a table another
// program owns, rather than blaming privilege.
func ownedError(t *nftables.Table, err error) error {
	if t != nil && tableFlags(t)&tableOwner != 0 && errors.Is(err, unix.EPERM) {
		return fmt.Errorf("table inet %s belongs to another program (nft table flag \"owner\"), which alone may change it: choose another --table", t.Name)
	}
	return plainError(err)
}

// tableFlags undoes google/nftables v0.3.0 decoding NFTA_TABLE_FLAGS in
// host byte order; netlink sends it big-endian.
func tableFlags(t *nftables.Table) uint32 {
	return binary.BigEndian.Uint32(binary.NativeEndian.AppendUint32(nil, t.Flags))
}

func isMissing(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)
}

// installed reads funtun's table: whether it is there, and the routing
// entries the last apply recorded as its own.
func installed(conn *nftables.Conn, table string) (*nftables.Table, *record, error) {
	t, err := conn.ListTableOfFamily(table, nftables.TableFamilyINet)
	if err != nil {
		if isMissing(err) {
			return nil, &record{}, nil
		}
		return nil, nil, plainError(err)
	}
	rules, err := conn.GetRules(t, &nftables.Chain{Name: recordChain, Table: t})
	if err != nil {
		if isMissing(err) {
			return t, &record{}, nil
		}
		return nil, nil, plainError(err)
	}
	for _, r := range rules {
		if c, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok && strings.HasPrefix(c, recordPrefix) {
			rec, err := parseRecord(c)
			if err != nil {
				return nil, nil, fmt.Errorf("table inet %s: %v", table, err)
			}
			return t, rec, nil
		}
	}
	return t, &record{}, nil
}

func install(out io.Writer, p *plan) error {
	conn, err := nftables.New()
	if err != nil {
		return plainError(err)
	}
	old, prev, err := installed(conn, p.table)
	if err != nil {
		return err
	}
	rec, added, err := ensureRouting(p.routes, prev)
	if err != nil {
		return err
	}
	if err := flushPlan(conn, p, rec); err != nil {
		err = ownedError(old, err)
		if undoErr := removeEntries(added); undoErr != nil {
			return fmt.Errorf("%v; undoing the routing it added also failed: %v", err, undoErr)
		}
		return err
	}
	// What the previous apply added and this one does not need goes now,
	// after the new rules are in, so there is no moment without them.
	var stale []routeEntry
	for _, e := range prev.entries {
		if !rec.has(e) {
			stale = append(stale, e)
		}
	}
	staleErr := removeEntries(stale)

	n := 0
	for _, c := range p.chains {
		n += len(c.rules)
	}
	fmt.Fprintf(out, "installed table inet %s: %s, %s\n", p.table, count(len(p.chains), "chain"), count(n, "rule"))
	for _, e := range added {
		fmt.Fprintf(out, "added: %s\n", e)
	}
	for _, e := range rec.entries {
		if !containsEntry(added, e) {
			fmt.Fprintf(out, "kept (added earlier by funtun): %s\n", e)
		}
	}
	for _, e := range rec.foreign {
		fmt.Fprintf(out, "present already, left to its owner: %s\n", e)
	}
	for _, e := range stale {
		fmt.Fprintf(out, "removed (no longer needed): %s\n", e)
	}
	return staleErr
}

func remove(out io.Writer, table string) error {
	conn, err := nftables.New()
	if err != nil {
		return plainError(err)
	}
	t, rec, err := installed(conn, table)
	if err != nil {
		return err
	}
	if t == nil {
		fmt.Fprintf(out, "table inet %s is not installed: nothing to remove\n", table)
		return nil
	}
	conn.DelTable(t)
	if err := conn.Flush(); err != nil {
		return ownedError(t, err)
	}
	fmt.Fprintf(out, "removed table inet %s\n", table)
	err = removeEntries(rec.entries)
	for _, e := range rec.entries {
		fmt.Fprintf(out, "removed: %s\n", e)
	}
	return err
}

func show(out io.Writer, table string) error {
	conn, err := nftables.New()
	if err != nil {
		return plainError(err)
	}
	t, rec, err := installed(conn, table)
	if err != nil {
		return err
	}
	if t == nil {
		fmt.Fprintf(out, "table inet %s is not installed\n", table)
		return nil
	}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return plainError(err)
	}
	fmt.Fprintf(out, "table inet %s\n", table)
	for _, c := range chains {
		if c.Table.Name != table || c.Name == recordChain {
			continue
		}
		hook := "no hook"
		if c.Hooknum != nil && c.Priority != nil {
			hook = fmt.Sprintf("%s hook %s priority %d", c.Type, hookName(*c.Hooknum), *c.Priority)
		}
		fmt.Fprintf(out, "  chain %s (%s)\n", c.Name, hook)
		rules, err := conn.GetRules(t, c)
		if err != nil {
			return plainError(err)
		}
		for _, r := range rules {
			comment, ok := userdata.GetString(r.UserData, userdata.TypeComment)
			if !ok {
				comment = "(a rule funtun did not write: see `nft list table inet " + table + "`)"
			}
			fmt.Fprintf(out, "    %s\n", comment)
		}
	}
	if rec.mark != 0 {
		fmt.Fprintf(out, "tproxy routing: fwmark 0x%x -> table %d\n", rec.mark, rec.table)
		for _, e := range rec.entries {
			state := "present"
			if ok, err := e.present(); err != nil {
				state = "unknown: " + plainError(err).Error()
			} else if !ok {
				state = "MISSING (run apply again)"
			}
			fmt.Fprintf(out, "  added by funtun: %s (%s)\n", e, state)
		}
		for _, e := range rec.foreign {
			fmt.Fprintf(out, "  present before funtun, not removed by it: %s\n", e)
		}
	}
	return nil
}

func count(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func hookName(h nftables.ChainHook) string {
	switch h {
	case *nftables.ChainHookPrerouting:
		return "prerouting"
	case *nftables.ChainHookOutput:
		return "output"
	case *nftables.ChainHookInput:
		return "input"
	case *nftables.ChainHookForward:
		return "forward"
	case *nftables.ChainHookPostrouting:
		return "postrouting"
	}
	return fmt.Sprint(uint32(h))
}

// flushPlan replaces the table in one batch: the kernel applies all of it
// or none, so a failure leaves the previous ruleset in force.
func flushPlan(conn *nftables.Conn, p *plan, rec *record) error {
	t := &nftables.Table{Name: p.table, Family: nftables.TableFamilyINet}
	// Adding first makes the delete valid when the table is absent.
	conn.AddTable(t)
	conn.DelTable(t)
	conn.AddTable(t)
	accept := nftables.ChainPolicyAccept
	for _, c := range p.chains {
		ch := &nftables.Chain{Name: c.name, Table: t, Policy: &accept}
		switch c.kind {
		case natPrerouting:
			ch.Type, ch.Hooknum, ch.Priority = nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest
		case natOutput:
			ch.Type, ch.Hooknum, ch.Priority = nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest
		case manglePrerouting:
			ch.Type, ch.Hooknum, ch.Priority = nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityMangle
		case routeOutput:
			ch.Type, ch.Hooknum, ch.Priority = nftables.ChainTypeRoute, nftables.ChainHookOutput, nftables.ChainPriorityMangle
		}
		conn.AddChain(ch)
		for _, r := range c.rules {
			var exprs []expr.Any
			for _, term := range append(append([]term(nil), r.match...), r.action...) {
				exprs = append(exprs, term.exprs()...)
			}
			conn.AddRule(&nftables.Rule{
				Table:    t,
				Chain:    ch,
				Exprs:    exprs,
				UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment),
			})
		}
	}
	if p.routes.needed() {
		ch := conn.AddChain(&nftables.Chain{Name: recordChain, Table: t})
		conn.AddRule(&nftables.Rule{
			Table:    t,
			Chain:    ch,
			Exprs:    []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}},
			UserData: userdata.AppendString(nil, userdata.TypeComment, rec.String()),
		})
	}
	return conn.Flush()
}

// exprs is the term as the kernel's nf_tables virtual machine runs it,
// the same expressions nft generates for the text form (nft --debug=netlink
// shows them).
func (t term) exprs() []expr.Any {
	load := func(k expr.MetaKey) *expr.Meta { return &expr.Meta{Key: k, Register: 1} }
	eq := func(data []byte) *expr.Cmp { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data} }
	u32 := binaryutil.NativeEndian.PutUint32
	switch t.kind {
	case matchMark:
		return []expr.Any{load(expr.MetaKeyMARK), eq(u32(t.num))}
	case matchSkuid:
		return []expr.Any{load(expr.MetaKeySKUID), eq(u32(t.num))}
	case matchCgroup:
		return []expr.Any{
			&expr.Socket{Key: expr.SocketKeyCgroupv2, Level: t.num, Register: 1},
			eq(binaryutil.NativeEndian.PutUint64(t.id)),
		}
	case matchIifname:
		// A trailing * compares only the prefix, as nft does.
		if name, wildcard := strings.CutSuffix(t.str, "*"); wildcard {
			return []expr.Any{load(expr.MetaKeyIIFNAME), eq([]byte(name))}
		}
		name := make([]byte, ifnameSize)
		copy(name, t.str)
		return []expr.Any{load(expr.MetaKeyIIFNAME), eq(name)}
	case matchDaddrLocal:
		return []expr.Any{
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			eq(u32(unix.RTN_LOCAL)),
		}
	case matchDaddr:
		return daddrExprs(t.prefix)
	case matchL4proto:
		return []expr.Any{load(expr.MetaKeyL4PROTO), eq([]byte{byte(t.num)})}
	case matchDport:
		dport := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
		if t.num == t.num2 {
			return []expr.Any{dport, eq(binaryutil.BigEndian.PutUint16(uint16(t.num)))}
		}
		return []expr.Any{dport, &expr.Range{Op: expr.CmpOpEq, Register: 1,
			FromData: binaryutil.BigEndian.PutUint16(uint16(t.num)),
			ToData:   binaryutil.BigEndian.PutUint16(uint16(t.num2))}}
	case doRedirect:
		return []expr.Any{
			&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(t.num))},
			&expr.Redir{RegisterProtoMin: 1},
		}
	case doTProxy:
		return []expr.Any{
			&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(t.num))},
			// Without an address match the family stays unspecified: one
			// rule serves IPv4 and IPv6 in an inet table.
			&expr.TProxy{Family: tproxyFamily[t.num2], TableFamily: unix.NFPROTO_INET, RegPort: 1},
		}
	case doSetMark:
		return []expr.Any{
			&expr.Immediate{Register: 1, Data: u32(t.num)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		}
	case doReturn:
		return []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}}
	case doAccept:
		return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
	case doDrop:
		return []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}
	}
	panic("firewall: unknown term")
}

var tproxyFamily = map[uint32]byte{0: unix.NFPROTO_UNSPEC, 4: unix.NFPROTO_IPV4, 6: unix.NFPROTO_IPV6}

func daddrExprs(p netip.Prefix) []expr.Any {
	proto, offset := byte(unix.NFPROTO_IPV4), uint32(16)
	if p.Addr().Is6() {
		proto, offset = unix.NFPROTO_IPV6, 24
	}
	addr := p.Addr().AsSlice()
	out := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(len(addr))},
	}
	if !p.IsSingleIP() {
		mask := make([]byte, len(addr))
		for i := 0; i < p.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(addr)), Mask: mask, Xor: make([]byte, len(addr))})
	}
	return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr})
}
