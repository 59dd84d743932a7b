// Package all links every Puzzle Piece into a program: import it for its
// side effect. The funtun command and the api package use it, so a new
// piece is added here once and nowhere else.
package all

import (
	_ "github.com/funtun/funtun/pieces/deny"
	_ "github.com/funtun/funtun/pieces/direct"
	_ "github.com/funtun/funtun/pieces/frame"
	_ "github.com/funtun/funtun/pieces/hosts"
	_ "github.com/funtun/funtun/pieces/httpconnect"
	_ "github.com/funtun/funtun/pieces/netstack"
	_ "github.com/funtun/funtun/pieces/pcap"
	_ "github.com/funtun/funtun/pieces/proxyproto"
	_ "github.com/funtun/funtun/pieces/rewrite"
	_ "github.com/funtun/funtun/pieces/route"
	_ "github.com/funtun/funtun/pieces/shape"
	_ "github.com/funtun/funtun/pieces/sixbed4"
	_ "github.com/funtun/funtun/pieces/socks5"
	_ "github.com/funtun/funtun/pieces/tls"
)
