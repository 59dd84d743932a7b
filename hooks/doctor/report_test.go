package doctor

import (
	"bytes"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		words   []string
		program []string
		json    bool
		err     string
	}{
		{args: []string{"profile=direct"}, words: []string{"profile=direct"}},
		{args: []string{"--json", "--allow-io-uring", "mode=seccomp", "profile=x"}, json: true, words: []string{"--allow-io-uring", "mode=seccomp", "profile=x"}},
		{args: []string{"profile=x", "curl", "-s", "a=b"}, words: []string{"profile=x"}, program: []string{"curl", "-s", "a=b"}},
		{args: []string{"guard=netns", "--", "--weird", "x"}, words: []string{"guard=netns"}, program: []string{"--weird", "x"}},
		{args: []string{"--"}, err: "name a program"},
		{args: []string{"--probe=gai,bogus"}, err: `no probe "bogus"`},
		{args: []string{"--probe", "gai", "curl"}, err: "not with a program"},
	} {
		req, _, err := parseArgs(tc.args)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one saying %q", tc.args, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if !reflect.DeepEqual(req.launcherWords, tc.words) || !reflect.DeepEqual(req.program, tc.program) || req.json != tc.json {
			t.Errorf("%q: words %q program %q json %v; want %q %q %v", tc.args, req.launcherWords, req.program, req.json, tc.words, tc.program, tc.json)
		}
	}
	if _, help, _ := parseArgs([]string{"profile=x", "--help"}); !help {
		t.Error("--help after a word is not help")
	}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// The path of each observation comes from what was seen, in this order: a
// marked (translated) source, a socket the funnel reports having handed
// off, the funnel process's own socket; anything else is the program's.
func TestClassify(t *testing.T) {
	obs := []observation{
		{Kind: "tcp", transport: "tcp", src: ap("192.0.2.3:40000"), dst: ap("192.0.2.1:9001")},
		{Kind: "tcp", transport: "tcp", src: ap("[2001:db8::3]:40000"), dst: ap("[2001:db8::1]:9001")},
		{Kind: "tcp", transport: "tcp", src: ap("192.0.2.2:40001"), dst: ap("192.0.2.1:9001")},
		{Kind: "udp", transport: "udp", src: ap("192.0.2.2:40002"), dst: ap("192.0.2.1:9008")},
		{Kind: "dns", transport: "udp", src: ap("192.0.2.2:40003"), dst: ap("192.0.2.1:53"), ownedByFunnel: true},
		{Kind: "tcp", transport: "tcp", src: ap("192.0.2.2:40004"), dst: ap("192.0.2.1:9001")},
		// Same port as a handoff, other destination port: not it.
		{Kind: "tcp", transport: "tcp", src: ap("192.0.2.2:40001"), dst: ap("192.0.2.1:9013")},
		// Same port, other transport: not it.
		{Kind: "udp", transport: "udp", src: ap("192.0.2.2:40001"), dst: ap("192.0.2.1:9001")},
		// Handed off from a socket that had picked the funnel's address,
		// which the lab's rule turned into the program's.
		{Kind: "tcp", transport: "tcp", src: ap("[2001:db8::2]:40005"), dst: ap("[2001:db8::1]:9009")},
	}
	handoffs := []handoff{
		{network: "tcp", src: ap("192.0.2.2:40001"), dstPort: 9001},
		{network: "udp", src: ap("0.0.0.0:40002"), dstPort: 9008}, // a wildcard-bound datagram socket
		{network: "tcp", src: ap("[2001:db8::3]:40005"), dstPort: 9009},
	}
	classify(obs, handoffs)
	want := []string{viaFunnel, viaFunnel, viaFunnel, viaFunnel, viaFunnel, viaDirect, viaDirect, viaDirect, viaFunnel}
	for i, o := range obs {
		if o.Path != want[i] {
			t.Errorf("%d (%s %s -> %s): path %s (%s), want %s", i, o.Kind, o.src, o.dst, o.Path, o.How, want[i])
		}
	}
}

func TestAttribute(t *testing.T) {
	obs := []observation{
		{Kind: "tcp", dst: ap("192.0.2.1:9002"), probe: "gai"},                           // by port: tcp-name
		{Kind: "dns", Query: "AAAA RES-QUERY.doctor.test.", dst: ap("192.0.2.1:53")},     // by name
		{Kind: "tcp", dst: ap("203.0.113.9:443"), probe: "raw-syscall"},                  // elsewhere: keeps the running probe
		{Kind: "udp", dst: ap("[2001:db8::1]:9009"), probe: "tcp-addr"},                  // IPv6 port
		{Kind: "dns", Query: "A example.org", dst: ap("192.0.2.1:53"), probe: "dns-udp"}, // unknown name
	}
	attribute(obs)
	for i, want := range []string{"tcp-name", "res-query", "raw-syscall", "tcp6", "dns-udp"} {
		if obs[i].probe != want {
			t.Errorf("%d: attributed to %q, want %q", i, obs[i].probe, want)
		}
	}
}

func probeNamed(name string) probe {
	for _, p := range probes {
		if p.name == name {
			return p
		}
	}
	panic(name)
}

func TestJudge(t *testing.T) {
	funnelTCP := observation{Kind: "tcp", Path: viaFunnel, How: "handed off by the funnel"}
	funnelDNS := observation{Kind: "dns", Path: viaFunnel, How: "the funnel's own socket"}
	leak := observation{Kind: "tcp", Path: viaDirect, Dst: "192.0.2.1:9013"}
	for _, tc := range []struct {
		probe     string
		succeeded bool
		seen      []observation
		verdict   string
		observed  string
	}{
		{"tcp-addr", true, []observation{funnelTCP}, verdictOK, "through the funnel"},
		// A leak is a leak whether or not the probe got its answer.
		{"raw-syscall", true, []observation{leak}, verdictLeak, "direct: tcp to 192.0.2.1:9013"},
		{"raw-syscall", false, []observation{leak}, verdictLeak, "direct"},
		// Blocked (a guard): nothing left, the probe failed.
		{"static-child", false, nil, verdictFailed, "nothing left"},
		// The funnel resolving the probe's name is not its connection.
		{"tcp-name", true, []observation{funnelDNS}, verdictFailed, "not seen outside"},
		{"gai", true, nil, verdictOK, "answered in the funnel"},
		{"gai", true, []observation{funnelDNS}, verdictOK, "it asked the resolver itself"},
		{"dns-udp", false, nil, verdictFailed, "nothing left"},
	} {
		r := judge(probeNamed(tc.probe), tc.succeeded, "", tc.seen)
		if r.Verdict != tc.verdict || !strings.Contains(r.Observed, tc.observed) {
			t.Errorf("%s (succeeded %v, seen %v): %s %q, want %s %q", tc.probe, tc.succeeded, tc.seen, r.Verdict, r.Observed, tc.verdict, tc.observed)
		}
	}
}

// The launcher's log is read for handoffs; warnings become a line; the
// program's own stderr passes untouched.
func TestLauncherLog(t *testing.T) {
	var other bytes.Buffer
	w := &launcherLog{other: &other}
	in := `{"time":"t","level":"INFO","msg":"flow handed off","flow":1,"hook":"preload","net":"tcp","src":"192.0.2.2:5000","dst":"tcp-name.doctor.test:9002"}
curl: (7) Failed to connect
{"time":"t","level":"WARN","msg":"flow failed","dst":"203.0.113.1:80","err":"direct: refused"}
{"time":"t","level":"DEBUG","msg":"preload: something"}
{"not":"a log line"}
`
	// In pieces, as a pipe delivers it.
	for len(in) > 0 {
		n := min(7, len(in))
		w.Write([]byte(in[:n]))
		in = in[n:]
	}
	w.flush()
	want := []handoff{{network: "tcp", src: ap("192.0.2.2:5000"), dstPort: 9002}}
	if !reflect.DeepEqual(w.handoffs, want) {
		t.Errorf("handoffs %+v, want %+v", w.handoffs, want)
	}
	wantOther := "curl: (7) Failed to connect\nfuntun: flow failed to 203.0.113.1:80: direct: refused\n{\"not\":\"a log line\"}\n"
	if other.String() != wantOther {
		t.Errorf("passed on:\n%s\nwant:\n%s", other.String(), wantOther)
	}
}
