package funnel

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Option is one `option KEY=VALUE` line at the top of a profile: a
// setting for the hook that runs the profile's flows (the launcher's
// guard=netns, say) rather than for any piece. The engine keeps and checks
// options but gives them no meaning: a hook registers the options it
// understands (RegisterOption), so the engine never learns a hook's words.
type Option struct {
	Key, Value string
	Pos        Pos // of the key
	ValuePos   Pos
}

func (o Option) String() string { return o.Key + "=" + quote(o.Value) }

// OptionInfo describes an option a hook understands.
type OptionInfo struct {
	Name string
	Help string // one line: the values and what they do
	// Check refuses a value the hook cannot use; the compiler turns its
	// error into FILE:LINE:COL at the value.
	Check func(value string) error
}

var (
	optionsMu sync.RWMutex
	options   = map[string]OptionInfo{}
)

// RegisterOption makes a profile option known; hooks call it from init.
func RegisterOption(info OptionInfo) {
	optionsMu.Lock()
	defer optionsMu.Unlock()
	if _, dup := options[info.Name]; dup {
		panic("funnel: option " + info.Name + " registered twice")
	}
	options[info.Name] = info
}

// LookupOption finds a registered option.
func LookupOption(name string) (OptionInfo, bool) {
	optionsMu.RLock()
	defer optionsMu.RUnlock()
	info, ok := options[name]
	return info, ok
}

// OptionNames lists the registered options, sorted.
func OptionNames() []string {
	optionsMu.RLock()
	defer optionsMu.RUnlock()
	names := make([]string, 0, len(options))
	for n := range options {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// checkOptions refuses unknown options, bad values and an option given
// twice, each at its place in the profile.
func checkOptions(opts []Option) error {
	seen := map[string]bool{}
	for _, o := range opts {
		info, ok := LookupOption(o.Key)
		if !ok {
			known := strings.Join(OptionNames(), ", ")
			if known == "" {
				known = "none in this build"
			}
			return &PosError{o.Pos, fmt.Sprintf("unknown option %q (known: %s)", o.Key, known)}
		}
		if seen[o.Key] {
			return &PosError{o.Pos, fmt.Sprintf("option %q is given twice", o.Key)}
		}
		seen[o.Key] = true
		if info.Check != nil {
			if err := info.Check(o.Value); err != nil {
				return &PosError{o.ValuePos, fmt.Sprintf("option %s: %v", o.Key, err)}
			}
		}
	}
	return nil
}

// Option returns the value of an option the profile sets. Only the
// profile a flow was given counts: options of profiles it routes to are
// not inherited.
func (pl *Pipeline) Option(key string) (string, bool) {
	for _, o := range pl.Options {
		if o.Key == key {
			return o.Value, true
		}
	}
	return "", false
}
