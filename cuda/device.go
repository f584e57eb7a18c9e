package cuda

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"
)

// Device attributes read with cuDeviceGetAttribute.
const (
	attrMultiprocessors = 16
	attrCCMajor         = 75
	attrCCMinor         = 76
	attrSharedOptin     = 97
)

// EnvSyncCheck, when set to 1, makes every launch synchronize and check the stream,
// so an asynchronous fault is reported with the kernel that caused it.
const EnvSyncCheck = "SWARMNODE_CUDA_SYNC"

// Info describes an opened device.
type Info struct {
	Ordinal          int
	Name             string
	CCMajor, CCMinor int
	SMs              int
	SharedOptin      int   // bytes of shared memory a block may opt into
	TotalMem         int64 // bytes
	Driver           int   // driver API version, e.g. 13000
	CUBLAS           int   // cuBLAS version, e.g. 130000
	NVRTC            [2]int
	Libraries        []string
}

// Device is one GPU, driven through its primary context by a goroutine locked to
// one OS thread (the context is current there and only there).
type Device struct {
	info   Info
	dev    int
	ctx    uintptr
	calls  chan func()
	quit   chan struct{}
	done   chan struct{}
	mu     sync.Mutex // guards closed
	closed bool
	c      *Ctx
}

// Available reports nil when a CUDA device can be opened, else why not. It loads the
// libraries and initialises the driver but opens no context.
func Available() error {
	if err := loadLibraries(); err != nil {
		return err
	}
	if err := drvInit(); err != nil {
		return fmt.Errorf("cuda: driver initialisation failed (no usable GPU?): %w", err)
	}
	n, err := drvDeviceCount()
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("cuda: the driver reports no GPU")
	}
	return nil
}

// Open retains the primary context of GPU ordinal and starts its owning goroutine.
func Open(ordinal int) (*Device, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	n, _ := drvDeviceCount()
	if ordinal < 0 || ordinal >= n {
		return nil, fmt.Errorf("cuda: device %d does not exist (%d present)", ordinal, n)
	}
	dev, err := drvDeviceGet(ordinal)
	if err != nil {
		return nil, err
	}
	d := &Device{dev: dev, calls: make(chan func()), quit: make(chan struct{}), done: make(chan struct{})}
	d.info.Ordinal = ordinal
	d.info.Libraries = Libraries()
	if d.info.Name, err = drvDeviceName(dev); err != nil {
		return nil, err
	}
	for _, a := range []struct {
		attr int
		dst  *int
	}{{attrCCMajor, &d.info.CCMajor}, {attrCCMinor, &d.info.CCMinor}, {attrMultiprocessors, &d.info.SMs}, {attrSharedOptin, &d.info.SharedOptin}} {
		if *a.dst, err = drvDeviceAttr(dev, a.attr); err != nil {
			return nil, err
		}
	}
	if d.info.TotalMem, err = drvTotalMem(dev); err != nil {
		return nil, err
	}
	if d.info.Driver, err = drvVersion(); err != nil {
		return nil, err
	}
	if d.info.NVRTC[0], d.info.NVRTC[1], err = rtcVersion(); err != nil {
		return nil, err
	}
	if d.ctx, err = drvPrimaryRetain(dev); err != nil {
		return nil, err
	}
	started := make(chan error, 1)
	go d.loop(started)
	if err := <-started; err != nil {
		<-d.done
		return nil, err
	}
	return d, nil
}

// loop is the owning goroutine: the context is current on its locked thread, and
// every GPU call of this device runs here.
func (d *Device) loop(started chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(d.done)
	err := drvCtxSetCurrent(d.ctx)
	if err == nil {
		d.c, err = newCtx(d)
	}
	if err != nil {
		_ = drvPrimaryRelease(d.dev)
		started <- err
		return
	}
	started <- nil
	for {
		select {
		case fn := <-d.calls:
			fn()
		case <-d.quit:
			d.c.destroy()
			_ = drvPrimaryRelease(d.dev)
			return
		}
	}
}

// Info describes the device.
func (d *Device) Info() Info { return d.info }

// Do runs fn on the device's owning thread and returns its error. Calls from
// several goroutines are serialised. fn must not call Do.
func (d *Device) Do(fn func(c *Ctx) error) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return ErrClosed
	}
	d.mu.Unlock()
	var err error
	ran := make(chan struct{})
	job := func() {
		defer close(ran)
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("cuda: panic on the device thread: %v", r)
			}
		}()
		err = fn(d.c)
	}
	select {
	case d.calls <- job:
	case <-d.done:
		return ErrClosed
	}
	<-ran
	return err
}

// Close frees the device's resources and releases the primary context. Buffers
// still allocated are freed with the context.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	close(d.quit)
	<-d.done
	return nil
}

// Ctx is the per-device state that GPU work uses; it is valid only inside Device.Do.
type Ctx struct {
	d         *Device
	stream    uintptr
	blas      uintptr
	workspace Buf
	args      unsafe.Pointer // launch arguments: maxArgs 8-byte slots, then maxArgs pointers to them
	kernels   *kernelSet
	pinned    unsafe.Pointer
	pinnedN   int64
	syncCheck bool
	allocs    map[uint64]int64
	attnW     int // tensor-core attention warps per block (0: default)
}

const maxArgs = 32

func newCtx(d *Device) (*Ctx, error) {
	c := &Ctx{d: d, allocs: map[uint64]int64{}, syncCheck: os.Getenv(EnvSyncCheck) == "1"}
	var err error
	if c.stream, err = drvStreamCreate(); err != nil {
		return nil, err
	}
	if c.blas, err = blasCreate(); err != nil {
		c.destroy()
		return nil, err
	}
	if d.info.CUBLAS, err = blasVersion(c.blas); err != nil {
		c.destroy()
		return nil, err
	}
	if err = blasSetStream(c.blas, c.stream); err != nil {
		c.destroy()
		return nil, err
	}
	// An explicit workspace lets cuBLAS run inside stream capture (CUDA graphs).
	if c.workspace, err = c.Alloc(U8, 32<<20); err != nil {
		c.destroy()
		return nil, err
	}
	if err = blasSetWorkspace(c.blas, c.workspace.Ptr, c.workspace.Bytes()); err != nil {
		c.destroy()
		return nil, err
	}
	c.args = cAlloc(maxArgs * 16)
	slots := unsafe.Slice((*uintptr)(unsafe.Add(c.args, maxArgs*8)), maxArgs)
	for i := range slots {
		slots[i] = uintptr(unsafe.Add(c.args, i*8))
	}
	return c, nil
}

func (c *Ctx) destroy() {
	if c.kernels != nil {
		c.kernels.unload()
	}
	if c.blas != 0 {
		_ = blasDestroy(c.blas)
	}
	for p := range c.allocs {
		_ = drvMemFree(p)
	}
	if c.pinned != nil {
		_ = drvMemFreeHost(c.pinned)
	}
	if c.stream != 0 {
		_ = drvStreamDestroy(c.stream)
	}
	if c.args != nil {
		cFree(c.args)
	}
}

// Info describes the device.
func (c *Ctx) Info() Info { return c.d.info }

// SetSyncCheck makes every launch synchronize and check for faults (slow; for tests).
func (c *Ctx) SetSyncCheck(on bool) { c.syncCheck = on }

// Sync waits for all queued work and reports any asynchronous fault.
func (c *Ctx) Sync() error { return drvStreamSync(c.stream) }

// DType is the element type of a buffer.
type DType int

// Element types.
const (
	F32  DType = iota // float32
	BF16              // bfloat16 (the top half of a float32)
	I8                // int8
	I32               // int32
	U8                // bytes
)

// Size is the element size in bytes.
func (t DType) Size() int {
	switch t {
	case F32, I32:
		return 4
	case BF16:
		return 2
	}
	return 1
}

func (t DType) String() string {
	return [...]string{"f32", "bf16", "i8", "i32", "u8"}[t]
}

// Buf is a typed range of device memory. Slicing yields views that share memory.
type Buf struct {
	Ptr   uint64
	N     int // elements
	DType DType
}

// Bytes is the buffer's size in bytes.
func (b Buf) Bytes() int64 { return int64(b.N) * int64(b.DType.Size()) }

// Slice returns elements [off, off+n) of b; it panics on a bad range, which is a
// programming error in the caller.
func (b Buf) Slice(off, n int) Buf {
	if off < 0 || n < 0 || off+n > b.N {
		panic(fmt.Sprintf("cuda: slice [%d,%d) of a %d-element buffer", off, off+n, b.N))
	}
	return Buf{Ptr: b.Ptr + uint64(off*b.DType.Size()), N: n, DType: b.DType}
}

// Alloc allocates n elements of type t (uninitialised).
func (c *Ctx) Alloc(t DType, n int) (Buf, error) {
	if n <= 0 {
		return Buf{}, fmt.Errorf("cuda: allocation of %d elements", n)
	}
	bytes := int64(n) * int64(t.Size())
	p, err := drvMemAlloc((bytes + 255) &^ 255)
	if err != nil {
		return Buf{}, err
	}
	c.allocs[p] = bytes
	return Buf{Ptr: p, N: n, DType: t}, nil
}

// Free releases a buffer returned by Alloc (not a slice of one).
func (c *Ctx) Free(b Buf) error {
	if b.Ptr == 0 {
		return nil
	}
	if _, ok := c.allocs[b.Ptr]; !ok {
		return fmt.Errorf("cuda: free of %#x, which Alloc did not return", b.Ptr)
	}
	delete(c.allocs, b.Ptr)
	return drvMemFree(b.Ptr)
}

// Zero sets b to zero bits (asynchronously).
func (c *Ctx) Zero(b Buf) error {
	if b.Bytes()%4 != 0 || b.Ptr%4 != 0 {
		return fmt.Errorf("cuda: Zero needs a 4-byte aligned size")
	}
	return drvMemsetD32(b.Ptr, 0, b.Bytes()/4, c.stream)
}

// Copy copies src to dst on the device (same type and length).
func (c *Ctx) Copy(dst, src Buf) error {
	if dst.DType != src.DType || dst.N != src.N {
		return fmt.Errorf("cuda: copy %d %v into %d %v", src.N, src.DType, dst.N, dst.DType)
	}
	return drvDtoD(dst.Ptr, src.Ptr, src.Bytes(), c.stream)
}

// staging returns pinned host memory of at least n bytes.
func (c *Ctx) staging(n int64) (unsafe.Pointer, error) {
	if n <= c.pinnedN {
		return c.pinned, nil
	}
	if c.pinned != nil {
		if err := drvStreamSync(c.stream); err != nil {
			return nil, err
		}
		if err := drvMemFreeHost(c.pinned); err != nil {
			return nil, err
		}
		c.pinned, c.pinnedN = nil, 0
	}
	size := max(n, 1<<20)
	p, err := drvMemAllocHost(size)
	if err != nil {
		return nil, err
	}
	c.pinned, c.pinnedN = p, size
	return p, nil
}

// upload copies n bytes of Go memory at src to dst through the pinned staging
// buffer and waits for the copy (the staging buffer is reused at once).
func (c *Ctx) upload(dst Buf, src unsafe.Pointer, n int64) error {
	if n != dst.Bytes() {
		return fmt.Errorf("cuda: upload of %d bytes into a %d-byte buffer", n, dst.Bytes())
	}
	if n == 0 {
		return nil
	}
	p, err := c.staging(n)
	if err != nil {
		return err
	}
	copy(unsafe.Slice((*byte)(p), n), unsafe.Slice((*byte)(src), n))
	if err := drvHtoD(dst.Ptr, p, n, c.stream); err != nil {
		return err
	}
	return drvStreamSync(c.stream)
}

// download waits for queued work, then copies src into n bytes of Go memory at dst.
func (c *Ctx) download(dst unsafe.Pointer, src Buf, n int64) error {
	if n != src.Bytes() {
		return fmt.Errorf("cuda: download of a %d-byte buffer into %d bytes", src.Bytes(), n)
	}
	if n == 0 {
		return nil
	}
	p, err := c.staging(n)
	if err != nil {
		return err
	}
	if err := drvDtoH(p, src.Ptr, n, c.stream); err != nil {
		return err
	}
	if err := drvStreamSync(c.stream); err != nil {
		return err
	}
	copy(unsafe.Slice((*byte)(dst), n), unsafe.Slice((*byte)(p), n))
	return nil
}

// first points at s's first element, or is nil for an empty s.
func first[E any](s []E) unsafe.Pointer {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Pointer(&s[0])
}

// Upload copies host float32 values into a float32 buffer.
func (c *Ctx) Upload(dst Buf, src []float32) error {
	if dst.DType != F32 {
		return fmt.Errorf("cuda: Upload of float32 into a %v buffer", dst.DType)
	}
	return c.upload(dst, first(src), int64(len(src))*4)
}

// UploadI32 copies host int32 values into an int32 buffer.
func (c *Ctx) UploadI32(dst Buf, src []int32) error {
	if dst.DType != I32 {
		return fmt.Errorf("cuda: UploadI32 into a %v buffer", dst.DType)
	}
	return c.upload(dst, first(src), int64(len(src))*4)
}

// Download copies a float32 buffer into dst (len(dst) == b.N).
func (c *Ctx) Download(dst []float32, src Buf) error {
	if src.DType != F32 {
		return fmt.Errorf("cuda: Download of a %v buffer as float32", src.DType)
	}
	return c.download(first(dst), src, int64(len(dst))*4)
}

// DownloadBytes copies any buffer's raw bytes into dst (len(dst) == b.Bytes()).
func (c *Ctx) DownloadBytes(dst []byte, src Buf) error {
	return c.download(first(dst), src, int64(len(dst)))
}

// UploadBytes copies raw bytes into any buffer (len(src) == b.Bytes()).
func (c *Ctx) UploadBytes(dst Buf, src []byte) error {
	return c.upload(dst, first(src), int64(len(src)))
}

// Time queues fn's work between two events in the stream, waits for it and
// returns the milliseconds the device spent on it.
func (c *Ctx) Time(fn func() error) (float32, error) {
	e0, err := drvEventCreate()
	if err != nil {
		return 0, err
	}
	defer drvEventDestroy(e0)
	e1, err := drvEventCreate()
	if err != nil {
		return 0, err
	}
	defer drvEventDestroy(e1)
	if err := drvEventRecord(e0, c.stream); err != nil {
		return 0, err
	}
	if err := fn(); err != nil {
		return 0, err
	}
	if err := drvEventRecord(e1, c.stream); err != nil {
		return 0, err
	}
	if err := drvEventSync(e1); err != nil {
		return 0, err
	}
	return drvEventElapsed(e0, e1)
}

// Graph is a captured sequence of stream work that can be replayed with one launch.
type Graph struct {
	g, exec uintptr
}

// Capture records the work fn queues (without running it) into a graph.
func (c *Ctx) Capture(fn func() error) (*Graph, error) {
	if err := drvCaptureBegin(c.stream); err != nil {
		return nil, err
	}
	// Synchronising is illegal while capturing.
	sc := c.syncCheck
	c.syncCheck = false
	ferr := fn()
	c.syncCheck = sc
	g, err := drvCaptureEnd(c.stream)
	if ferr != nil {
		if g != 0 {
			_ = drvGraphDestroy(g)
		}
		return nil, ferr
	}
	if err != nil {
		return nil, err
	}
	exec, err := drvGraphInstantiate(g)
	if err != nil {
		_ = drvGraphDestroy(g)
		return nil, err
	}
	return &Graph{g: g, exec: exec}, nil
}

// Launch queues one replay of the graph.
func (c *Ctx) Launch(g *Graph) error { return drvGraphLaunch(g.exec, c.stream) }

// Destroy frees the graph.
func (c *Ctx) Destroy(g *Graph) error {
	err := drvGraphExecDestroy(g.exec)
	if err2 := drvGraphDestroy(g.g); err == nil {
		err = err2
	}
	return err
}
