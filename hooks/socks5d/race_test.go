//go:build race

package socks5d

// The race detector makes sync.Pool drop items on purpose, so pooled
// frames get allocated anew: allocation counts mean nothing under it.
const raceEnabled = true
