package cuda

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"unsafe"
)

var (
	//go:embed common.cuh
	commonSource string
	//go:embed kernels.cu
	coreSource string
	//go:embed attention_f32.cu
	attnF32Source string
)

// EnvCacheDir overrides where compiled kernels are cached
// (default: the user cache directory, swarmnode/cuda).
const EnvCacheDir = "SWARMNODE_CUDA_CACHE"

// Kernel modules, compiled separately and only when first needed: the float32
// attention kernels take most of NVRTC's time and the bf16 path never uses them.
const (
	modCore    = "kernels"
	modAttnF32 = "attention_f32"
)

func moduleSource(name string) string {
	if name == modAttnF32 {
		return commonSource + attnF32Source
	}
	return commonSource + coreSource
}

// moduleOf names the module holding kernel fn.
func moduleOf(fn string) string {
	if strings.HasPrefix(fn, "attn_") && !strings.Contains(fn, "_tc") {
		return modAttnF32
	}
	return modCore
}

// module is one loaded cubin and its functions, looked up on first use.
type module struct {
	handle uintptr
	funcs  map[string]uintptr
}

type kernelSet struct{ mods map[string]*module }

func (k *kernelSet) unload() {
	for _, m := range k.mods {
		_ = drvModuleUnload(m.handle)
	}
}

func (c *Ctx) module(name string) (*module, error) {
	if c.kernels == nil {
		c.kernels = &kernelSet{mods: map[string]*module{}}
	}
	if m, ok := c.kernels.mods[name]; ok {
		return m, nil
	}
	info := c.d.info
	src := moduleSource(name)
	arch := fmt.Sprintf("sm_%d%d", info.CCMajor, info.CCMinor)
	opts := []string{"--gpu-architecture=" + arch, "-std=c++17", "-DSN_NVRTC=1"}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%q\x00nvrtc %d.%d\x00", src, opts, info.NVRTC[0], info.NVRTC[1])
	key := hex.EncodeToString(h.Sum(nil))[:32]
	dir := os.Getenv(EnvCacheDir)
	if dir == "" {
		if base, err := os.UserCacheDir(); err == nil {
			dir = filepath.Join(base, "swarmnode", "cuda")
		}
	}
	var path string
	if dir != "" {
		path = filepath.Join(dir, name+"-"+key+"."+arch+".cubin")
	}
	m := &module{funcs: map[string]uintptr{}}
	if path != "" {
		if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
			if hdl, err := drvModuleLoad(b); err == nil {
				m.handle = hdl
			} else {
				_ = os.Remove(path) // a corrupt entry: compile afresh
			}
		}
	}
	if m.handle == 0 {
		cubin, log, err := rtcCompile(src, name+".cu", opts)
		if err != nil {
			return nil, fmt.Errorf("cuda: compiling %s.cu for %s: %v\n%s", name, arch, err, log)
		}
		if m.handle, err = drvModuleLoad(cubin); err != nil {
			return nil, err
		}
		// The cache is an optimisation: a read-only or full disk only costs a recompile.
		if path != "" && os.MkdirAll(dir, 0o755) == nil {
			tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
			if os.WriteFile(tmp, cubin, 0o644) == nil {
				_ = os.Rename(tmp, path)
			}
		}
	}
	c.kernels.mods[name] = m
	return m, nil
}

func (c *Ctx) function(name string) (uintptr, error) {
	m, err := c.module(moduleOf(name))
	if err != nil {
		return 0, err
	}
	if f, ok := m.funcs[name]; ok {
		return f, nil
	}
	f, err := drvModuleFunction(m.handle, name)
	if err != nil {
		return 0, err
	}
	m.funcs[name] = f
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

// KernelResources reports a kernel's registers per thread, local (spill) memory per
// thread and static shared memory per block, as compiled for this device.
func (c *Ctx) KernelResources(name string) (regs, local, shared int, err error) {
	f, err := c.function(name)
	if err != nil {
		return 0, 0, 0, err
	}
	const attrShared, attrLocal, attrRegs = 1, 3, 4
	if regs, err = drvFuncGetAttr(f, attrRegs); err != nil {
		return
	}
	if local, err = drvFuncGetAttr(f, attrLocal); err != nil {
		return
	}
	shared, err = drvFuncGetAttr(f, attrShared)
	return
}
