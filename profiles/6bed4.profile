# IPv6 anywhere: `funtun profile=6bed4 PROGRAM` gives a program IPv6 reach
# on a host that has only IPv4. IPv6 destinations, and names (the tunnel
# profile sends a name direct when it has an IPv4 address), go through a
# user-space TCP/IP stack and the 6bed4 tunnel; everything else goes
# direct. A program that listens on all addresses is reachable on the
# same port of its 6bed4 address too. The router is set in profile
# 6bed4-tunnel (docs/pieces/6bed4.md).
route
  ::1/128=direct      # this host (and localhost)
  fe80::/10=direct    # link-local: not the tunnel's link
  ipv6=6bed4-tunnel
  name=6bed4-tunnel
  default=direct
