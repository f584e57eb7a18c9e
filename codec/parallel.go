package codec

import (
	"runtime"
	"sync"
)

// parallelMin is the smallest tensor, in values, that Append and Decode split across
// goroutines. Below it the work (well under a millisecond) is too short to pay for
// waking idle Ps, and small payloads are rarely on a critical path anyway.
const parallelMin = 256 << 10

// chunkMin is the least work, in values, worth handing to one goroutine: a goroutine
// costs about a microsecond to start and wake, a 64K-value chunk tens of microseconds.
const chunkMin = 64 << 10

// parts is how many goroutines Append and Decode use for n values.
func parts(n int) int {
	if n < parallelMin {
		return 1
	}
	return max(1, min(runtime.GOMAXPROCS(0), n/chunkMin))
}

// forChunks splits [0, units) into at most p contiguous ranges and calls f on each,
// the first on the calling goroutine and the rest on their own. Each f stops at its
// first bad value, and ranges are in index order, so the error of the lowest failing
// range is the one a single pass would have met first: results do not depend on p
// or on scheduling.
func forChunks(p, units int, f func(lo, hi int) error) error {
	if p > units {
		p = units
	}
	if p <= 1 {
		return f(0, units)
	}
	per := (units + p - 1) / p
	p = (units + per - 1) / per // rounding up per can leave the last ranges empty
	errs := make([]error, p)
	var wg sync.WaitGroup
	for i := 1; i < p; i++ {
		lo := i * per
		hi := min(lo+per, units)
		wg.Go(func() { errs[i] = f(lo, hi) })
	}
	errs[0] = f(0, per)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
