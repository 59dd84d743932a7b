//go:build !race

package socks5d

const raceEnabled = false
