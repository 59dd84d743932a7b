// Command goclient fetches a URL and prints the body: a Go program built
// with CGO_ENABLED=0 (static, its own system calls and its own DNS
// resolver), which LD_PRELOAD cannot hook and mode=seccomp must.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: goclient URL")
		os.Exit(2)
	}
	// No proxy from the environment: the funnel is the only way out.
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Get(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "goclient:", err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(os.Stdout, resp.Body); err != nil {
		fmt.Fprintln(os.Stderr, "goclient:", err)
		os.Exit(1)
	}
}
