// Package profiles holds the profiles compiled into the binary. A file in
// the user's or the system's profile directory with the same name wins.
package profiles

import "embed"

// Builtin holds NAME.profile files.
//
//go:embed *.profile
var Builtin embed.FS
