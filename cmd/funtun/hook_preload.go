//go:build linux

package main

import _ "github.com/funtun/funtun/hooks/preload"
