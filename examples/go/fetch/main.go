// Command fetch gets a URL through a funtun template: the HTTP client's
// connections come from api.Dial, so the template's pieces (a SOCKS5
// chain, TLS, a rewrite, names known only to the funnel) carry them.
//
//	go run ./examples/go/fetch -template tor-ish http://example.org/
//	go run ./examples/go/fetch -template "chain=hosts demo.test=127.0.0.1" http://demo.test:8000/
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/funtun/funtun/api"
)

func main() {
	template := flag.String("template", "", "profile name, or chain=PIECE k=v | … (default: direct)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: fetch [-template NAME] URL")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	client := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			// The host name reaches the funnel unresolved: the template
			// decides what it means.
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return api.Dial(ctx, *template, network, addr)
			},
		},
	}
	resp, err := client.Get(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fetch:", err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(os.Stdout, resp.Body); err != nil {
		fmt.Fprintln(os.Stderr, "fetch:", err)
		os.Exit(1)
	}
	if resp.StatusCode >= 400 {
		fmt.Fprintln(os.Stderr, "fetch:", resp.Status)
		os.Exit(1)
	}
}
