//go:build linux

package doctor

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Names of the veth pair's ends. They live in the lab's namespaces only,
// so they cannot clash with the host's interfaces or another doctor's.
const (
	insideLink  = "doctor0"
	outsideLink = "doctor1"
)

// infiniteLifetime is INFINITY_LIFE_TIME of an address's lifetimes.
const infiniteLifetime = 0xffffffff

// lab is the pair of network namespaces: the program and the launcher's
// funnel inside, the responders, the resolver and the capture outside.
// The namespaces have no name (nothing under /run/netns): they live as
// long as the handles and the processes in them, so a doctor that dies
// leaves nothing behind.
type lab struct {
	origin, inside, outside netns.NsHandle
	// dir holds the inside's resolv.conf.
	dir        string
	resolvConf string
}

// newLab builds the lab; on error nothing of it is left.
func newLab() (l *lab, err error) {
	l = &lab{origin: -1, inside: -1, outside: -1}
	defer func() {
		if err != nil {
			l.close()
		}
	}()
	if l.origin, err = netns.Get(); err != nil {
		return l, fmt.Errorf("cannot open this network namespace: %v", err)
	}
	if l.inside, err = l.newNS(); err != nil {
		return l, err
	}
	if l.outside, err = l.newNS(); err != nil {
		return l, err
	}
	if err = l.wire(); err != nil {
		return l, err
	}
	if err = l.sysctls(); err != nil {
		return l, err
	}
	if err = l.markRules(); err != nil {
		return l, fmt.Errorf("nftables in the lab: %v", err)
	}
	if l.dir, err = os.MkdirTemp("", "funtun-doctor-"); err != nil {
		return l, err
	}
	l.resolvConf = filepath.Join(l.dir, "resolv.conf")
	conf := fmt.Sprintf("# funtun doctor: the lab's resolver\nnameserver %s\n", outside4)
	if err = os.WriteFile(l.resolvConf, []byte(conf), 0o644); err != nil {
		return l, err
	}
	return l, nil
}

func (l *lab) close() {
	for _, h := range []*netns.NsHandle{&l.inside, &l.outside, &l.origin} {
		if *h >= 0 {
			h.Close()
			*h = -1
		}
	}
	if l.dir != "" {
		os.RemoveAll(l.dir)
	}
}

// in runs fn on an OS thread that is in the namespace ns: sockets made
// and processes started there belong to ns. The thread is given back to
// the runtime only once it is home again; one that cannot go home is left
// locked, so that the runtime ends it with the goroutine.
func (l *lab) in(ns netns.NsHandle, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			done <- fmt.Errorf("cannot enter the lab's network namespace: %v", err)
			return
		}
		err := fn()
		if herr := netns.Set(l.origin); herr != nil {
			done <- errors.Join(err, herr)
			return
		}
		runtime.UnlockOSThread()
		done <- err
	}()
	return <-done
}

// newNS makes a network namespace and returns its handle, leaving the
// calling thread where it was.
func (l *lab) newNS() (netns.NsHandle, error) {
	h := netns.None()
	err := l.in(l.origin, func() error {
		var err error
		h, err = netns.New()
		if err != nil {
			return fmt.Errorf("cannot make a network namespace: %v", err)
		}
		return nil
	})
	return h, err
}

// wire joins the namespaces with a veth pair and gives them addresses
// and routes: the inside sends everything to the outside, which answers
// on its own addresses and refuses the rest (see sysctls).
func (l *lab) wire() error {
	out, err := netlink.NewHandleAt(l.outside)
	if err != nil {
		return err
	}
	defer out.Close()
	in, err := netlink.NewHandleAt(l.inside)
	if err != nil {
		return err
	}
	defer in.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: outsideLink},
		PeerName:      insideLink,
		PeerNamespace: netlink.NsFd(int(l.inside)),
	}
	if err := out.LinkAdd(veth); err != nil {
		return fmt.Errorf("cannot make the lab's veth pair: %v", err)
	}
	type end struct {
		h     *netlink.Handle
		link  string
		addrs []netip.Addr
	}
	for _, e := range []end{
		{out, outsideLink, []netip.Addr{outside4, outside6}},
		{in, insideLink, []netip.Addr{inside4, funnel4, inside6, funnel6}},
	} {
		lo, err := e.h.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := e.h.LinkSetUp(lo); err != nil {
			return err
		}
		link, err := e.h.LinkByName(e.link)
		if err != nil {
			return err
		}
		for _, a := range e.addrs {
			bits := labBits4
			if a.Is6() {
				bits = labBits6
			}
			// No duplicate address detection: the link has two ends,
			// and an address still tentative would fail the first probes.
			addr := &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(a, bits)), Flags: unix.IFA_F_NODAD}
			if a == funnel4 || a == funnel6 {
				// Deprecated (valid, not preferred): the kernel picks it
				// for no socket of its own accord, so only the mark
				// rule's packets leave from it.
				addr.ValidLft, addr.PreferedLft = infiniteLifetime, 0
			}
			if err := e.h.AddrAdd(link, addr); err != nil {
				return fmt.Errorf("address %s on %s: %v", a, e.link, err)
			}
		}
		if err := e.h.LinkSetUp(link); err != nil {
			return err
		}
	}
	link, err := in.LinkByName(insideLink)
	if err != nil {
		return err
	}
	for _, gw := range []netip.Addr{outside4, outside6} {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice()}
		if err := in.RouteAdd(r); err != nil {
			return fmt.Errorf("default route via %s: %v", gw, err)
		}
	}
	return nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// sysctls: the outside forwards (having no route anywhere, it answers
// "unreachable" at once to a packet for any other address, so that a
// leaking program fails fast instead of waiting for a timeout) and does
// not rate-limit those answers.
func (l *lab) sysctls() error {
	set := map[string]string{
		"net/ipv4/ip_forward":             "1",
		"net/ipv6/conf/all/forwarding":    "1",
		"net/ipv4/icmp_ratelimit":         "0",
		"net/ipv6/icmp/ratelimit":         "0",
		"net/ipv6/conf/default/accept_ra": "0",
	}
	return l.in(l.outside, func() error {
		for key, value := range set {
			// /proc/sys/net is that of the opening thread's namespace.
			if err := os.WriteFile("/proc/sys/"+key, []byte(value), 0); err != nil {
				return fmt.Errorf("sysctl %s in the lab: %v", key, err)
			}
		}
		return nil
	})
}

// markRules: in the inside namespace, packets of marked sockets (the
// funnel's, through FUNTUN_MARK) leave from the funnel's own address, so
// that the outside sees at a glance which packets the funnel sent; and
// nothing unmarked leaves from it, whatever address the kernel picked for
// a socket (for IPv6 it may well pick the funnel's).
func (l *lab) markRules() error {
	conn, err := nftables.New(nftables.WithNetNSFd(int(l.inside)))
	if err != nil {
		return err
	}
	table := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "funtun-doctor"})
	chain := conn.AddChain(&nftables.Chain{
		Name:     "funnel-source",
		Table:    table,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	})
	noMark := []byte{0, 0, 0, 0}
	for _, a := range []struct{ funnel, program netip.Addr }{{funnel4, inside4}, {funnel6, inside6}} {
		family, srcOffset := uint32(unix.NFPROTO_IPV4), uint32(12)
		if a.funnel.Is6() {
			family, srcOffset = unix.NFPROTO_IPV6, 8
		}
		isFamily := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(family)}},
		}
		snat := func(to netip.Addr) []expr.Any {
			return []expr.Any{
				&expr.Immediate{Register: 1, Data: to.AsSlice()},
				&expr.NAT{Type: expr.NATTypeSourceNAT, Family: family, RegAddrMin: 1},
			}
		}
		marked := append(append(isFamily[:2:2],
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: noMark},
		), snat(a.funnel)...)
		unmarkedFromFunnel := append(append(isFamily[:2:2],
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: noMark},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: srcOffset, Len: uint32(a.funnel.BitLen() / 8)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.funnel.AsSlice()},
		), snat(a.program)...)
		conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: marked})
		conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: unmarkedFromFunnel})
	}
	return conn.Flush()
}
