package main

// Every piece registers itself; importing it is all it takes to build it in.
import (
	_ "github.com/funtun/funtun/pieces/deny"
	_ "github.com/funtun/funtun/pieces/direct"
	_ "github.com/funtun/funtun/pieces/frame"
	_ "github.com/funtun/funtun/pieces/hosts"
	_ "github.com/funtun/funtun/pieces/httpconnect"
	_ "github.com/funtun/funtun/pieces/pcap"
	_ "github.com/funtun/funtun/pieces/rewrite"
	_ "github.com/funtun/funtun/pieces/route"
	_ "github.com/funtun/funtun/pieces/shape"
	_ "github.com/funtun/funtun/pieces/socks5"
	_ "github.com/funtun/funtun/pieces/tls"
)
