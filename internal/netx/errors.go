package netx

import (
	"errors"
	"net"
)

// OpCause is what a *net.OpError wraps (bind: address already in use),
// for messages that already say which operation and address failed:
// "cannot listen on tcp 127.0.0.1:80: listen tcp 127.0.0.1:80: bind: …"
// would say it twice.
func OpCause(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}
