//go:build !unix

package sdactivate

// socketKind: socket activation is a Unix protocol; activation.Files
// passes nothing elsewhere, so this is never reached with a real socket.
func socketKind(fd int) (socketKindT, error) { return kindOther, nil }
