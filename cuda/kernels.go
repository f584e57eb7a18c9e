package cuda

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"
	"unsafe"
)

//go:embed kernels.cu
var kernelSource string

// EnvCacheDir overrides where compiled kernels are cached
// (default: the user cache directory, swarmnode/cuda).
const EnvCacheDir = "SWARMNODE_CUDA_CACHE"

// kernelSet is the loaded module and its functions, looked up on first use.
type kernelSet struct {
	module  uintptr
	funcs   map[string]uintptr
	cached  bool          // the cubin came from the disk cache
	compile time.Duration // NVRTC time when it did not
}

func (k *kernelSet) unload() {
	if k.module != 0 {
		_ = drvModuleUnload(k.module)
	}
}

// KernelStats reports whether the kernels came from the disk cache and, if not,
// how long NVRTC took. It loads the kernels if needed.
func (c *Ctx) KernelStats() (cached bool, compile time.Duration, err error) {
	if err := c.loadKernels(); err != nil {
		return false, 0, err
	}
	return c.kernels.cached, c.kernels.compile, nil
}

func (c *Ctx) loadKernels() error {
	if c.kernels != nil {
		return nil
	}
	info := c.d.info
	arch := fmt.Sprintf("sm_%d%d", info.CCMajor, info.CCMinor)
	opts := []string{"--gpu-architecture=" + arch, "-std=c++17", "-DSN_NVRTC=1"}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%q\x00nvrtc %d.%d\x00", kernelSource, opts, info.NVRTC[0], info.NVRTC[1])
	key := hex.EncodeToString(h.Sum(nil))[:32]
	dir := os.Getenv(EnvCacheDir)
	if dir == "" {
		if base, err := os.UserCacheDir(); err == nil {
			dir = filepath.Join(base, "swarmnode", "cuda")
		}
	}
	var path string
	if dir != "" {
		path = filepath.Join(dir, key+"."+arch+".cubin")
	}
	ks := &kernelSet{funcs: map[string]uintptr{}}
	var cubin []byte
	if path != "" {
		if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
			cubin, ks.cached = b, true
		}
	}
	if cubin == nil {
		t0 := time.Now()
		b, log, err := rtcCompile(kernelSource, "kernels.cu", opts)
		if err != nil {
			return fmt.Errorf("cuda: compiling kernels for %s: %v\n%s", arch, err, log)
		}
		cubin, ks.compile = b, time.Since(t0)
		if path != "" {
			// The cache is an optimisation: a read-only or full disk only costs a recompile.
			if os.MkdirAll(dir, 0o755) == nil {
				tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
				if os.WriteFile(tmp, cubin, 0o644) == nil {
					_ = os.Rename(tmp, path)
				}
			}
		}
	}
	m, err := drvModuleLoad(cubin)
	if err != nil && ks.cached {
		// A corrupt cache entry: drop it and compile afresh.
		_ = os.Remove(path)
		c.kernels = nil
		return c.loadKernelsFresh(opts, path, arch)
	}
	if err != nil {
		return err
	}
	ks.module = m
	c.kernels = ks
	return nil
}

func (c *Ctx) loadKernelsFresh(opts []string, path, arch string) error {
	t0 := time.Now()
	b, log, err := rtcCompile(kernelSource, "kernels.cu", opts)
	if err != nil {
		return fmt.Errorf("cuda: compiling kernels for %s: %v\n%s", arch, err, log)
	}
	m, err := drvModuleLoad(b)
	if err != nil {
		return err
	}
	if path != "" {
		_ = os.WriteFile(path, b, 0o644)
	}
	c.kernels = &kernelSet{module: m, funcs: map[string]uintptr{}, compile: time.Since(t0)}
	return nil
}

func (c *Ctx) function(name string) (uintptr, error) {
	if err := c.loadKernels(); err != nil {
		return 0, err
	}
	if f, ok := c.kernels.funcs[name]; ok {
		return f, nil
	}
	f, err := drvModuleFunction(c.kernels.module, name)
	if err != nil {
		return 0, err
	}
	c.kernels.funcs[name] = f
	return f, nil
}

// dim3 is a launch grid or block shape.
type dim3 = [3]uint32

func grid1(n, per int) dim3 { return dim3{uint32((n + per - 1) / per), 1, 1} }

// launch queues kernel name with the given arguments. Arguments are Buf (its device
// pointer), uint64 (a device pointer), int (passed as int32), int32, int64 and float32.
func (c *Ctx) launch(name string, grid, block dim3, shmem int, args ...any) error {
	if len(args) > maxArgs {
		return fmt.Errorf("cuda: %s: %d arguments", name, len(args))
	}
	if grid[0] == 0 || grid[1] == 0 || grid[2] == 0 {
		return nil // nothing to do
	}
	f, err := c.function(name)
	if err != nil {
		return err
	}
	slots := unsafe.Slice((*uint64)(c.args), maxArgs)
	for i, a := range args {
		switch v := a.(type) {
		case Buf:
			slots[i] = v.Ptr
		case uint64:
			slots[i] = v
		case int:
			if v < math.MinInt32 || v > math.MaxInt32 {
				return fmt.Errorf("cuda: %s: argument %d (%d) overflows int32", name, i, v)
			}
			slots[i] = uint64(uint32(int32(v)))
		case int32:
			slots[i] = uint64(uint32(v))
		case int64:
			slots[i] = uint64(v)
		case float32:
			slots[i] = uint64(math.Float32bits(v))
		default:
			return fmt.Errorf("cuda: %s: argument %d has unsupported type %T", name, i, a)
		}
	}
	if err := drvLaunch(f, grid, block, uint32(shmem), c.stream, unsafe.Add(c.args, maxArgs*8), name); err != nil {
		return err
	}
	if c.syncCheck {
		if err := drvStreamSync(c.stream); err != nil {
			return fmt.Errorf("after %s: %w", name, err)
		}
	}
	return nil
}
