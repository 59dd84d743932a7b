package preload

import (
	"fmt"

	"github.com/funtun/funtun/funnel"
)

// The launcher's profile options. They are words of the launcher, not of
// the engine: a profile says `option guard=netns` or `option
// io_uring=allow` above its chain, and the same words on the launcher's
// command line win over the profile's.
const (
	optionGuard   = "guard"
	optionIOUring = "io_uring"
)

var optionValues = map[string][]string{
	optionGuard:   {"netns", "none"},
	optionIOUring: {"allow", "deny"},
}

func checkOptionValue(name string) func(string) error {
	return func(v string) error {
		for _, ok := range optionValues[name] {
			if v == ok {
				return nil
			}
		}
		return fmt.Errorf("%q is not one of %v", v, optionValues[name])
	}
}

func init() {
	funnel.RegisterOption(funnel.OptionInfo{
		Name:  optionGuard,
		Help:  "netns: run the program in a network namespace of its own that has only loopback (launcher); none: do not",
		Check: checkOptionValue(optionGuard),
	})
	funnel.RegisterOption(funnel.OptionInfo{
		Name:  optionIOUring,
		Help:  "allow: let the program use io_uring, whose connections bypass the funnel (launcher); deny: keep it off (the default)",
		Check: checkOptionValue(optionIOUring),
	})
}
