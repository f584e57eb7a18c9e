package cuda

import (
	"fmt"
	"math"
	"math/rand"
	"os"
	"sync"
	"testing"
	"time"
)

var (
	devOnce sync.Once
	testDev *Device
	devErr  error
)

// device returns the shared test GPU or skips the test, saying why.
func device(t testing.TB) *Device {
	t.Helper()
	devOnce.Do(func() {
		testDev, devErr = Open(0)
		if devErr == nil {
			i := testDev.Info()
			fmt.Printf("cuda: %s, cc %d.%d, %d SMs, %.1f GiB, driver %d, cuBLAS %d, NVRTC %d.%d\n  libraries: %v\n",
				i.Name, i.CCMajor, i.CCMinor, i.SMs, float64(i.TotalMem)/(1<<30), i.Driver, i.CUBLAS, i.NVRTC[0], i.NVRTC[1], i.Libraries)
		}
	})
	if devErr != nil {
		t.Skipf("no usable CUDA GPU, skipping (run `make gpu-test` on a GPU machine): %v", devErr)
	}
	return testDev
}

func TestMain(m *testing.M) {
	code := m.Run()
	if testDev != nil {
		testDev.Close()
	}
	os.Exit(code)
}

// newRand returns a generator with a fresh seed, logged so that a failure can be replayed.
func newRand(t testing.TB) *rand.Rand {
	seed := time.Now().UnixNano()
	if s := os.Getenv("SWARMNODE_CUDA_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	t.Logf("seed %d", seed)
	return rand.New(rand.NewSource(seed))
}

func randn(r *rand.Rand, n int, std float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64() * std)
	}
	return x
}

func f64(x []float32) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(v)
	}
	return y
}

// relErr is ‖got − ref‖ / ‖ref‖; NaN (an unwritten, poisoned output) never passes.
func relErr(got []float32, ref []float64) float64 {
	if len(got) != len(ref) {
		return math.Inf(1)
	}
	var num, den float64
	for i, v := range got {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return math.Inf(1)
		}
		d := float64(v) - ref[i]
		num += d * d
		den += ref[i] * ref[i]
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

func checkErr(t *testing.T, name string, got []float32, ref []float64, tol float64) {
	t.Helper()
	e := relErr(got, ref)
	if !(e < tol) {
		t.Errorf("%s: relative error %.3g, want < %.0e", name, e, tol)
	} else {
		t.Logf("%s: relative error %.3g", name, e)
	}
}

// gpu wraps a Ctx for tests: the first error sticks (t.Fatal must not run on the
// device thread) and every buffer is freed at the end.
type gpu struct {
	c    *Ctx
	err  error
	bufs []Buf
}

func newGPU(c *Ctx) *gpu {
	c.SetSyncCheck(true)
	return &gpu{c: c}
}

func (g *gpu) check(err error) {
	if err != nil && g.err == nil {
		g.err = err
	}
}

func (g *gpu) alloc(t DType, n int) Buf {
	if g.err != nil {
		return Buf{}
	}
	b, err := g.c.Alloc(t, n)
	g.check(err)
	if err == nil {
		g.bufs = append(g.bufs, b)
		if t == F32 { // poison: unwritten outputs fail the checks
			nan := make([]float32, n)
			for i := range nan {
				nan[i] = float32(math.NaN())
			}
			g.check(g.c.Upload(b, nan))
		}
	}
	return b
}

func (g *gpu) up(x []float32) Buf {
	b := g.alloc(F32, len(x))
	if g.err == nil {
		g.check(g.c.Upload(b, x))
	}
	return b
}

func (g *gpu) upI32(x []int32) Buf {
	b := g.alloc(I32, len(x))
	if g.err == nil {
		g.check(g.c.UploadI32(b, x))
	}
	return b
}

func (g *gpu) upBF16(x []float32) Buf {
	f := g.up(x)
	b := g.alloc(BF16, len(x))
	if g.err == nil {
		g.check(g.c.Cast(b, f))
	}
	return b
}

func (g *gpu) zeros(n int) Buf {
	b := g.alloc(F32, n)
	if g.err == nil {
		g.check(g.c.Zero(b))
	}
	return b
}

func (g *gpu) down(b Buf) []float32 {
	if g.err != nil {
		return nil
	}
	if b.DType == BF16 {
		f := g.alloc(F32, b.N)
		g.check(g.c.Cast(f, b))
		b = f
	}
	out := make([]float32, b.N)
	g.check(g.c.Download(out, b))
	return out
}

func (g *gpu) done() error {
	if err := g.c.Sync(); err != nil && g.err == nil {
		g.err = err
	}
	for _, b := range g.bufs {
		g.check(g.c.Free(b))
	}
	g.c.SetSyncCheck(os.Getenv(EnvSyncCheck) == "1")
	return g.err
}

// run runs fn on the test device with a gpu helper and fails the test on error.
func run(t testing.TB, fn func(g *gpu)) {
	t.Helper()
	d := device(t)
	if err := d.Do(func(c *Ctx) error {
		g := newGPU(c)
		fn(g)
		return g.done()
	}); err != nil {
		t.Fatal(err)
	}
}

// bf16Round rounds float32 values to bfloat16 precision (nearest even), as the GPU does.
func bf16Round(x []float32) []float32 {
	y := make([]float32, len(x))
	for i, v := range x {
		u := math.Float32bits(v)
		u += 0x7fff + ((u >> 16) & 1)
		y[i] = math.Float32frombits(u &^ 0xffff)
	}
	return y
}
