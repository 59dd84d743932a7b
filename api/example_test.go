package api_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/funtun/funtun/api"
)

// Dial a name that exists only inside the funnel, with the bytes the
// program sends rewritten on the way.
func ExampleDial() {
	// A server that echoes one line.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	go func() {
		c, _ := l.Accept()
		line, _ := bufio.NewReader(c).ReadString('\n')
		io.WriteString(c, line)
		c.Close()
	}()
	port := l.Addr().(*net.TCPAddr).Port

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	template := "chain=rewrite dir=up from=ping to=PONG | hosts demo.test=127.0.0.1"
	c, err := api.Dial(ctx, template, "tcp", fmt.Sprintf("demo.test:%d", port))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	io.WriteString(c, "ping\n")
	answer, _ := bufio.NewReader(c).ReadString('\n')
	fmt.Print(answer)
	// Output: PONG
}

// Listen with a template whose pieces work on every accepted connection
// before Accept returns it (here a rewrite; a tls piece would terminate
// TLS).
func ExampleListen() {
	ctx := context.Background()
	l, err := api.Listen(ctx, "chain=rewrite dir=down from=secret to=XXXXXX", "tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer l.Close()
	go func() {
		c, _ := l.Accept()
		// What the server receives from the network passes the rewrite
		// on its way up.
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Print("server got: ", line)
		c.Close()
	}()
	c, _ := net.Dial("tcp", l.Addr().String())
	io.WriteString(c, "my secret\n")
	io.ReadAll(c)
	c.Close()
	// Output: server got: my XXXXXX
}

// ListenPacket sends datagrams to a name only the funnel knows.
func ExampleListenPacket() {
	echo, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer echo.Close()
	go func() {
		buf := make([]byte, 1500)
		n, from, _ := echo.ReadFromUDP(buf)
		echo.WriteToUDP(buf[:n], from)
	}()
	port := echo.LocalAddr().(*net.UDPAddr).Port

	pc, err := api.ListenPacket(context.Background(), "chain=hosts echo.test=127.0.0.1", "udp", ":0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pc.Close()
	pc.WriteTo([]byte("hello"), api.NameAddr("udp", fmt.Sprintf("echo.test:%d", port)))
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, from, _ := pc.ReadFrom(buf)
	host, _, _ := net.SplitHostPort(from.String())
	fmt.Printf("%s from %s\n", buf[:n], host)
	// Output: hello from echo.test
}
