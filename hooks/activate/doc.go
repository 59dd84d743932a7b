// Package activate is `funtun activate`: funtun keeps a service's real
// listening sockets (the ones systemd passed it, or its own --listen
// ones), puts every connection through a profile's pieces as an incoming
// flow (a tls piece terminates TLS), and starts the program with sockets
// of its own in LISTEN_FDS that the funnel feeds, so a socket-activated
// server gains the pieces without any change to it.
//
// The feeding (Feeder, Plan) and the start of a program with LISTEN_PID
// set to its own pid (Start) are exported: the launcher (hooks/preload)
// uses the same code for the sockets it inherits under socket activation.
package activate
