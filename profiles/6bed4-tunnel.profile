# The 6bed4 tunnel of profile 6bed4: a user-space stack whose IPv6 packets
# travel in UDP over IPv4 to the router. Flows to IPv4, and to names with
# an IPv4 address, go direct. To use another router, put a file of this
# name in ~/.config/funtun/profiles/ with router=IPV4:PORT changed.
netstack ipv4=direct | 6bed4 router=145.136.0.1:25790
