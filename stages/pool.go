package stages

import "sync"

// maxFreePerSize bounds how many idle buffers of one size a pool keeps; more
// in-flight passes than that allocate, and their buffers are dropped on return.
const maxFreePerSize = 4

// maxFree bounds the idle buffers of all sizes together, so that microbatches of
// many different shapes cannot make the pool hold memory without limit.
const maxFree = 8

// slabPool recycles the large activation and scratch buffers of forward and
// backward passes, which would otherwise be allocated (and zeroed, and faulted in)
// for every microbatch.
type slabPool struct {
	mu    sync.Mutex
	free  map[int][][]float32
	count int
}

// get returns a buffer of exactly n floats with arbitrary contents.
func (p *slabPool) get(n int) []float32 {
	p.mu.Lock()
	if l := p.free[n]; len(l) > 0 {
		b := l[len(l)-1]
		p.free[n] = l[:len(l)-1]
		p.count--
		p.mu.Unlock()
		return b
	}
	p.mu.Unlock()
	return make([]float32, n)
}

// put hands a buffer from get back to the pool.
func (p *slabPool) put(b []float32) {
	if b == nil {
		return
	}
	n := len(b)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.free == nil {
		p.free = map[int][][]float32{}
	}
	if len(p.free[n]) >= maxFreePerSize {
		return
	}
	if p.count >= maxFree {
		// Make room by dropping a buffer of another size: the newest shape is the
		// likeliest to be asked for again.
		for m, l := range p.free {
			if m != n && len(l) > 0 {
				p.free[m] = l[:len(l)-1]
				if len(p.free[m]) == 0 {
					delete(p.free, m)
				}
				p.count--
				break
			}
		}
		if p.count >= maxFree {
			return
		}
	}
	p.free[n] = append(p.free[n], b)
	p.count++
}

// carver hands out consecutive pieces of one slab.
type carver struct {
	buf []float32
	off int
}

func (c *carver) take(n int) []float32 {
	s := c.buf[c.off : c.off+n : c.off+n]
	c.off += n
	return s
}
