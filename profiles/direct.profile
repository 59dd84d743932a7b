# The default profile: the flow goes straight to its destination. When a
# stream flow passes through untouched, the relay joins the two kernel
# sockets with splice(2) and the bytes never enter user space.
direct
