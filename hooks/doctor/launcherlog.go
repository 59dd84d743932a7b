package doctor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"sync"
)

// launcherLog takes the launcher's JSON log lines out of its stderr:
// handoffs are noted, warnings and errors passed on in a line each, the
// rest dropped; whatever else comes (the program's stderr) is passed on
// as it is.
type launcherLog struct {
	mu       sync.Mutex
	other    io.Writer
	partial  []byte
	handoffs []handoff
}

func (w *launcherLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		w.line(w.partial[:i+1])
		w.partial = w.partial[i+1:]
	}
	return len(p), nil
}

func (w *launcherLog) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.partial) > 0 {
		w.line(w.partial)
		w.partial = nil
	}
}

type logLine struct {
	Time  string `json:"time"`
	Level string `json:"level"`
	Msg   string `json:"msg"`
	Net   string `json:"net"`
	Src   string `json:"src"`
	Dst   string `json:"dst"`
	Err   string `json:"err"`
}

func (w *launcherLog) line(b []byte) {
	var ll logLine
	if bytes.HasPrefix(b, []byte("{")) && json.Unmarshal(b, &ll) == nil && ll.Time != "" && ll.Msg != "" {
		switch {
		case ll.Msg == "flow handed off":
			if h, ok := parseHandoff(ll); ok {
				w.handoffs = append(w.handoffs, h)
			}
		case ll.Level == "WARN" || ll.Level == "ERROR":
			line := "funtun: " + ll.Msg
			if ll.Dst != "" {
				line += " to " + ll.Dst
			}
			if ll.Err != "" {
				line += ": " + ll.Err
			}
			fmt.Fprintln(w.other, line)
		}
		return
	}
	w.other.Write(b)
}

func parseHandoff(ll logLine) (handoff, bool) {
	src, err := netip.ParseAddrPort(ll.Src)
	if err != nil {
		return handoff{}, false
	}
	i := strings.LastIndexByte(ll.Dst, ':')
	if i < 0 {
		return handoff{}, false
	}
	port, err := strconv.ParseUint(ll.Dst[i+1:], 10, 16)
	if err != nil {
		return handoff{}, false
	}
	return handoff{network: ll.Net, src: src, dstPort: uint16(port)}, true
}
