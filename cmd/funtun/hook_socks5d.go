package main

import _ "github.com/funtun/funtun/hooks/socks5d"
