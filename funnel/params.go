package funnel

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Params gives a factory its parameters, typed, and turns a bad value into
// an error that names the file, line, column, piece and key.
type Params struct {
	Piece string
	Pos   Pos
	list  []*Param
}

// NewParams is for tests and for hooks that build a piece from flags.
func NewParams(piece string, kv ...string) *Params {
	p := &Params{Piece: piece, Pos: Pos{File: "args", Line: 1, Col: 1}}
	for i := 0; i+1 < len(kv); i += 2 {
		p.list = append(p.list, &Param{Key: kv[i], Value: kv[i+1], Pos: p.Pos, ValuePos: p.Pos})
	}
	return p
}

// ParamsOf gives the parameters of a parsed piece, for commands that build
// one piece outside a profile.
func ParamsOf(spec PieceSpec) *Params {
	return &Params{Piece: spec.Name, Pos: spec.Pos, list: spec.Params}
}

func (p *Params) find(key string) *Param {
	var found *Param
	for _, x := range p.list {
		if x.Key == key {
			x.used = true
			found = x // the last one wins, as on a command line
		}
	}
	return found
}

// Has reports whether key was given (and marks it known).
func (p *Params) Has(key string) bool { return p.find(key) != nil }

// Errorf reports a problem with key's value.
func (p *Params) Errorf(key, format string, args ...any) error {
	pos := p.Pos
	if x := p.find(key); x != nil {
		pos = x.ValuePos
	}
	return &PosError{pos, fmt.Sprintf("piece %q: %s: ", p.Piece, key) + fmt.Sprintf(format, args...)}
}

// Fail reports a problem with the piece as a whole.
func (p *Params) Fail(format string, args ...any) error {
	return &PosError{p.Pos, fmt.Sprintf("piece %q: ", p.Piece) + fmt.Sprintf(format, args...)}
}

// String returns key's value, or def when absent.
func (p *Params) String(key, def string) string {
	if x := p.find(key); x != nil {
		return x.Value
	}
	return def
}

// Required returns key's value or an error saying it is needed.
func (p *Params) Required(key, example string) (string, error) {
	if x := p.find(key); x != nil && x.Value != "" {
		return x.Value, nil
	}
	return "", p.Fail("needs %s=%s", key, example)
}

// Bool accepts true/false/yes/no/on/off/1/0.
func (p *Params) Bool(key string, def bool) (bool, error) {
	x := p.find(key)
	if x == nil {
		return def, nil
	}
	switch strings.ToLower(x.Value) {
	case "true", "yes", "on", "1":
		return true, nil
	case "false", "no", "off", "0":
		return false, nil
	}
	return def, p.Errorf(key, "%q is not true or false", x.Value)
}

// Int reads a whole number within [min, max].
func (p *Params) Int(key string, def, min, max int64) (int64, error) {
	x := p.find(key)
	if x == nil {
		return def, nil
	}
	n, err := strconv.ParseInt(x.Value, 10, 64)
	if err != nil || n < min || n > max {
		return def, p.Errorf(key, "%q is not a whole number from %d to %d", x.Value, min, max)
	}
	return n, nil
}

// Duration reads a Go duration such as 150ms or 5s.
func (p *Params) Duration(key string, def time.Duration) (time.Duration, error) {
	x := p.find(key)
	if x == nil {
		return def, nil
	}
	d, err := time.ParseDuration(x.Value)
	if err != nil || d < 0 {
		return def, p.Errorf(key, "%q is not a duration like 150ms, 5s or 2m", x.Value)
	}
	return d, nil
}

// Size reads a byte count with an optional k/M/G suffix (powers of 1024),
// or a rate with the same suffixes and an optional trailing "/s".
func (p *Params) Size(key string, def int64) (int64, error) {
	x := p.find(key)
	if x == nil {
		return def, nil
	}
	n, err := ParseSize(x.Value)
	if err != nil {
		return def, p.Errorf(key, "%v", err)
	}
	return n, nil
}

// ParseSize reads 1500, 64k, 10M, 1G, or 2M/s.
func ParseSize(s string) (int64, error) {
	v := strings.TrimSuffix(strings.TrimSpace(s), "/s")
	v = strings.TrimSuffix(strings.TrimSuffix(v, "B"), "i")
	mult := int64(1)
	if v != "" {
		switch v[len(v)-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		}
		if mult != 1 {
			v = v[:len(v)-1]
		}
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("%q is not a size like 1500, 64k, 10M or 1G", s)
	}
	return int64(f * float64(mult)), nil
}

// All returns every parameter in order and marks them known; for pieces whose
// keys are free-form (hosts, route).
func (p *Params) All() []*Param {
	for _, x := range p.list {
		x.used = true
	}
	return p.list
}

// unused is the first parameter no getter asked for.
func (p *Params) unused() *Param {
	for _, x := range p.list {
		if !x.used {
			return x
		}
	}
	return nil
}

// Len is how many parameters were given (none known or unknown marked).
func (p *Params) Len() int { return len(p.list) }
