package rewrite

import "bytes"

// replacer rewrites one direction of a stream. push takes the next bytes and
// appends to dst whatever can already be sent; end is the end of the stream
// and appends everything still held back. Output is the same however the
// input was cut into pushes. flush appends what is held back as it is, the
// stream going on: an unfinished match at that point is no match (the
// conn calls it when nothing more came within hold=).
type replacer interface {
	push(dst, src []byte) []byte
	end(dst []byte) []byte
	flush(dst []byte) []byte
	held() int // bytes waiting for more input
}

// literal replaces every non-overlapping occurrence of from, left to right,
// exactly as strings.ReplaceAll does on the whole stream. It holds back only
// the longest tail that is still a beginning of from, so that a line that
// cannot be part of a match is never delayed waiting for the next one.
type literal struct {
	from, to []byte
	border   []int  // KMP border table of from: border[i] is the longest proper border of from[:i+1]
	tail     []byte // a proper prefix of from, waiting for the next bytes
	joined   []byte // scratch: tail followed by the new bytes
}

func newLiteral(from, to []byte) *literal {
	l := &literal{from: from, to: to, border: make([]int, len(from))}
	k := 0
	for i := 1; i < len(from); i++ {
		for k > 0 && from[i] != from[k] {
			k = l.border[k-1]
		}
		if from[i] == from[k] {
			k++
		}
		l.border[i] = k
	}
	return l
}

func (l *literal) push(dst, src []byte) []byte {
	data := src
	if len(l.tail) > 0 {
		l.joined = append(append(l.joined[:0], l.tail...), src...)
		data = l.joined
	}
	for {
		i := bytes.Index(data, l.from)
		if i < 0 {
			break
		}
		dst = append(dst, data[:i]...)
		dst = append(dst, l.to...)
		data = data[i+len(l.from):]
	}
	keep := l.openPrefix(data)
	dst = append(dst, data[:len(data)-keep]...)
	l.tail = append(l.tail[:0], data[len(data)-keep:]...)
	return dst
}

// openPrefix is the length of the longest suffix of data that is a proper
// prefix of from, given that data holds no whole occurrence of from. Only
// the last len(from)-1 bytes can matter, so the cost is bounded by from.
func (l *literal) openPrefix(data []byte) int {
	if w := len(l.from) - 1; len(data) > w {
		data = data[len(data)-w:]
	}
	k := 0
	for _, c := range data {
		for k > 0 && c != l.from[k] {
			k = l.border[k-1]
		}
		if c == l.from[k] {
			k++
		}
	}
	return k
}

func (l *literal) end(dst []byte) []byte {
	dst = append(dst, l.tail...)
	l.tail = l.tail[:0]
	return dst
}

// flush is end: the tail is a beginning of from and nothing else, and a
// match starts afresh after it.
func (l *literal) flush(dst []byte) []byte { return l.end(dst) }

func (l *literal) held() int { return len(l.tail) }
