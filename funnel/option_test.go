package funnel_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/funtun/funtun/funnel"
)

func init() {
	funnel.RegisterOption(funnel.OptionInfo{
		Name: "colour",
		Help: "red or blue",
		Check: func(v string) error {
			if v != "red" && v != "blue" {
				return errors.New("want red or blue")
			}
			return nil
		},
	})
}

func TestProfileOptions(t *testing.T) {
	text := "# a comment first\noption colour=blue\n\ndirect # the chain\n"
	set, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "p.profile", Text: text}})
	if err != nil {
		t.Fatal(err)
	}
	pl, _ := set.Profile("p")
	if v, ok := pl.Option("colour"); !ok || v != "blue" {
		t.Errorf("option colour = %q, %v; want blue", v, ok)
	}
	if _, ok := pl.Option("size"); ok {
		t.Error("an option the profile does not set is reported set")
	}
	if got := pl.String(); got != "direct" {
		t.Errorf("chain = %q, want direct", got)
	}
}

func TestProfileOptionErrors(t *testing.T) {
	for _, c := range []struct{ text, want string }{
		{"option size=9\ndirect", "p.profile:1:8: unknown option \"size\" (known: "},
		{"option colour=green\ndirect", "p.profile:1:15: option colour: want red or blue"},
		{"option colour=red colour=blue\ndirect", "p.profile:1:19: option \"colour\" is given twice"},
		{"direct\noption colour=red", "p.profile:2:1: option lines come before the chain"},
		{"option\ndirect", "p.profile:1:1: option needs KEY=VALUE"},
		{"option colour=red direct", "p.profile:1:19: option: \"direct\" is not KEY=VALUE"},
		// The chain keeps its own positions below the options.
		{"option colour=red\n\n  nosuchpiece", "p.profile:3:3: unknown piece \"nosuchpiece\""},
	} {
		_, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "p.profile", Text: c.text}})
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%q: error %v, want it to start with %q", c.text, err, c.want)
		}
	}
}
