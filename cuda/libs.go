package cuda

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
)

// Environment variables that name the libraries to load instead of the defaults.
const (
	EnvLibCUDA   = "SWARMNODE_LIBCUDA"   // default libcuda.so.1
	EnvLibCUBLAS = "SWARMNODE_LIBCUBLAS" // default libcublas.so.13, then libcublas.so.12
	EnvLibNVRTC  = "SWARMNODE_LIBNVRTC"  // default libnvrtc.so.13, then libnvrtc.so.12
)

// cudaLibDirs are tried after the bare names (which use the loader's path) because a
// CUDA toolkit is often installed off the loader path.
var cudaLibDirs = []string{"/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib",
	"/usr/local/cuda-13.0/targets/x86_64-linux/lib", "/usr/local/cuda-12/targets/x86_64-linux/lib"}

var (
	libsOnce sync.Once
	libsErr  error
	libsUsed []string
)

// loadLibraries dlopens the driver, cuBLAS and NVRTC once per process.
func loadLibraries() error {
	libsOnce.Do(func() {
		if !cgoAvailable {
			libsErr = errors.New("cuda: this binary was built without cgo (or not for Linux), so it cannot load the CUDA libraries; rebuild with CGO_ENABLED=1")
			return
		}
		for _, l := range []struct {
			which, env string
			names      []string
		}{
			{"cuda", EnvLibCUDA, []string{"libcuda.so.1"}},
			{"cublas", EnvLibCUBLAS, []string{"libcublas.so.13", "libcublas.so.12"}},
			{"nvrtc", EnvLibNVRTC, []string{"libnvrtc.so.13", "libnvrtc.so.12"}},
		} {
			path, err := loadOne(l.which, l.env, l.names)
			if err != nil {
				libsErr = err
				return
			}
			libsUsed = append(libsUsed, path)
		}
	})
	return libsErr
}

func loadOne(which, env string, names []string) (string, error) {
	if p := os.Getenv(env); p != "" {
		if err := loadLib(which, p); err != nil {
			return "", fmt.Errorf("cuda: %s=%s: %v", env, p, err)
		}
		return p, nil
	}
	cands := append([]string{}, names...)
	if which != "cuda" {
		for _, d := range cudaLibDirs {
			for _, n := range names {
				cands = append(cands, d+"/"+n)
			}
		}
	}
	var msgs []string
	for _, c := range cands {
		err := loadLib(which, c)
		if err == nil {
			return c, nil
		}
		msgs = append(msgs, err.Error())
	}
	hint := "is the NVIDIA driver installed?"
	if which != "cuda" {
		hint = "install the CUDA 12 or 13 toolkit libraries or set " + env
	}
	return "", fmt.Errorf("cuda: cannot load %s (%s): %s", strings.Join(names, " or "), hint, msgs[0])
}

// Libraries lists the paths of the libraries loaded so far.
func Libraries() []string { return append([]string(nil), libsUsed...) }
