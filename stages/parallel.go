package stages

import (
	"runtime"
	"sync"
)

// workers is the number of goroutines the CPU ops split their work across.
func workers() int { return runtime.GOMAXPROCS(0) }

// parallelFor splits [0, n) into contiguous chunks of at least grain items, runs
// fn on each chunk in its own goroutine and waits for all of them. Small jobs run
// inline: a goroutine costs about a microsecond, more than a short row loop.
func parallelFor(n, grain int, fn func(lo, hi int)) {
	parallelWorkers(n, grain, workers(), func(_, lo, hi int) { fn(lo, hi) })
}

// parallelWorkers runs fn(worker, lo, hi) like parallelFor but also passes the
// worker's index in [0, count), so that each worker can own a scratch buffer.
func parallelWorkers(n, grain, count int, fn func(w, lo, hi int)) {
	if n <= 0 {
		return
	}
	w := count
	if grain < 1 {
		grain = 1
	}
	if m := n / grain; m < w {
		w = m
	}
	if w <= 1 {
		fn(0, 0, n)
		return
	}
	var wg sync.WaitGroup
	wg.Add(w - 1)
	for i := 1; i < w; i++ {
		lo, hi := n*i/w, n*(i+1)/w
		go func() {
			defer wg.Done()
			fn(i, lo, hi)
		}()
	}
	fn(0, 0, n/w)
	wg.Wait()
}
