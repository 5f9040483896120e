// Package delayproxy relays TCP connections on 127.0.0.1 to a target,
// delivering every chunk it reads, in either direction, a fixed delay
// after it was read: a server that is 2 x Delay of round-trip time away,
// for tests and benchmarks. It can also drop a connection instead of
// forwarding an answer (a connection lost mid-request).
package delayproxy

import (
	"fmt"
	"net"
	"sync"
	"time"
)

// Options configure Start.
type Options struct {
	// Delay is the one-way delay (RTT/2).
	Delay time.Duration
	// DropReply, when set, is asked before each chunk from the target is
	// forwarded; true closes both sides of that connection instead.
	DropReply func() bool
	// DialTimeout bounds connecting to the target (default 10s).
	DialTimeout time.Duration
}

// Proxy is a running relay.
type Proxy struct {
	// Addr is the 127.0.0.1:port clients connect to.
	Addr string

	target string
	opts   Options
	l      net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

// Start listens on a free 127.0.0.1 port and relays every connection to
// target.
func Start(target string, opts Options) (*Proxy, error) {
	if opts.Delay < 0 {
		return nil, fmt.Errorf("delayproxy: negative delay %s", opts.Delay)
	}
	if opts.DialTimeout == 0 {
		opts.DialTimeout = 10 * time.Second
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("delayproxy: %w", err)
	}
	p := &Proxy{Addr: l.Addr().String(), target: target, opts: opts, l: l}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		s, err := net.DialTimeout("tcp", p.target, p.opts.DialTimeout)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(s, c, nil)
		go p.pipe(c, s, p.opts.DropReply)
	}
}

type chunk struct {
	at   time.Time
	data []byte
}

// pipe copies src to dst, each chunk delivered Delay after it was read,
// in order; drop, when set, may end the connection instead.
func (p *Proxy) pipe(dst, src net.Conn, drop func() bool) {
	defer p.wg.Done()
	q := make(chan chunk, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range q {
			time.Sleep(time.Until(c.at))
			if _, err := dst.Write(c.data); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if drop != nil && drop() {
				src.Close()
				dst.Close()
				break
			}
			q <- chunk{at: time.Now().Add(p.opts.Delay), data: append([]byte(nil), buf[:n]...)}
		}
		if err != nil {
			break
		}
	}
	close(q)
	<-done
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// Close stops the proxy, ends its connections and waits for its
// goroutines.
func (p *Proxy) Close() {
	p.l.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
