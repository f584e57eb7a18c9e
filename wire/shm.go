package wire

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Frames between two peers on the same host need not cross the encrypted,
// multiplexed libp2p connection: a Conn with a Shm writes a large payload into
// a file in shared memory (/dev/shm, a tmpfs) and sends only the frame's header
// and the file's name; the receiver reads the file, removes it and checks the
// header's checksum over what it read, as for a payload that came on the stream.
// On one H200 host a libp2p connection carried 444–609 MB/s where a memory copy
// runs at several GB/s (docs/transport.md), and two stages on one GPU exchange
// megabytes per microbatch.
//
// The name travels on the authenticated stream, so only the peer at the other end
// of it can point a receiver at a file, and a receiver takes only names of the
// form a Shm makes, of a regular file that is not a link, of exactly the length
// the header announces. The directory is not listable by others (0711) and
// names are 128 random bits, so a file is read only by whoever was sent its
// name; the files are 0644 so that a peer running as another user of the host
// can read them.
//
// Whether two peers share /dev/shm (one host, one mount namespace) is learnt,
// not assumed: a caller sends through shared memory to a peer on a loopback
// address until the peer answers ErrShared (it could not read the file), and a
// server answers through shared memory only a request that came that way.

// FlagShared marks a frame whose payload lies in a shared-memory file; the
// stream carries sharedNameLen bytes of its name in place of the payload.
const FlagShared uint8 = 2

// MinShared is the smallest payload a Conn sends through shared memory: below it
// a file costs more system calls than the stream does.
const MinShared = 256 << 10

// sharedNameLen is the fixed length of a shared payload's name on the stream.
const sharedNameLen = 96

// shmRoot is where shared payloads live: a tmpfs on Linux.
const shmRoot = "/dev/shm"

// sharedName is the form of every name a Shm makes: its directory, then a file.
var sharedName = regexp.MustCompile(`^swarmnode-[0-9]+-[0-9a-f]{16}/[0-9a-f]{32}$`)

// Shm is one peer's directory of shared-memory payloads. It is safe for
// concurrent use.
type Shm struct {
	dir  string // absolute
	base string // the directory's name under shmRoot
	sent atomic.Int64

	mu    sync.Mutex
	files []written // written and maybe not read yet, oldest first
}

// ErrNoShm means this host has no shared memory to put payloads in.
var ErrNoShm = errors.New("wire: no shared memory on this host")

// NewShm creates this process's directory under /dev/shm, mode 0700.
func NewShm() (*Shm, error) {
	if fi, err := os.Stat(shmRoot); err != nil || !fi.IsDir() {
		return nil, ErrNoShm
	}
	removeStale(time.Now())
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, err
	}
	base := fmt.Sprintf("swarmnode-%d-%s", os.Getpid(), hex.EncodeToString(r[:]))
	dir := filepath.Join(shmRoot, base)
	if err := os.Mkdir(dir, 0o711); err != nil {
		return nil, fmt.Errorf("wire: shared memory: %w", err)
	}
	return &Shm{dir: dir, base: base}, nil
}

// removeStale removes the directories of processes killed before they could
// (kill -9): those whose process is gone and that nothing wrote to for
// sharedTTL. A process of another PID namespace looks gone too; if its
// directory goes, its next payloads go on the stream.
func removeStale(now time.Time) {
	dirs, _ := filepath.Glob(filepath.Join(shmRoot, "swarmnode-*-*"))
	for _, d := range dirs {
		var pid int
		var rest string
		if _, err := fmt.Sscanf(filepath.Base(d), "swarmnode-%d-%s", &pid, &rest); err != nil || pid <= 0 {
			continue
		}
		fi, err := os.Stat(d)
		if err != nil || now.Sub(fi.ModTime()) < sharedTTL {
			continue
		}
		if processGone(pid) {
			_ = os.RemoveAll(d)
		}
	}
}

// Close removes the directory and every payload still in it.
func (m *Shm) Close() error {
	if m == nil {
		return nil
	}
	return os.RemoveAll(m.dir)
}

// Frames returns how many payloads went through m so far (0 for nil).
func (m *Shm) Frames() int64 {
	if m == nil {
		return 0
	}
	return m.sent.Load()
}

// sharedTTL is how long a written payload may wait for its reader before the
// writer removes it: a reader that died or gave up never will.
const sharedTTL = 2 * time.Minute

// put writes payload into a new file and returns its name on the stream.
func (m *Shm) put(payload []byte) ([]byte, error) {
	var r [16]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, err
	}
	name := m.base + "/" + hex.EncodeToString(r[:])
	path := filepath.Join(shmRoot, name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("wire: shared payload: %w", err)
	}
	_, err = f.Write(payload)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("wire: shared payload: %w", err)
	}
	m.sweep(name, time.Now())
	m.sent.Add(1)
	out := make([]byte, sharedNameLen)
	copy(out, name)
	return out, nil
}

// written is a payload file and when it was written.
type written struct {
	name string
	at   time.Time
}

// sweep records name as written at now and removes the payloads written
// sharedTTL ago or earlier (those read since are gone already). Files are
// recorded in the order written, so only the expired front is looked at.
func (m *Shm) sweep(name string, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.files = append(m.files, written{name, now})
	n := 0
	for n < len(m.files) && now.Sub(m.files[n].at) > sharedTTL {
		_ = os.Remove(filepath.Join(shmRoot, m.files[n].name))
		n++
	}
	if n > 0 {
		m.files = append(m.files[:0], m.files[n:]...)
	}
}

// readShared reads the shared payload named on r into buf (reused when large
// enough), n bytes exactly, and removes its file.
func readShared(r io.Reader, buf []byte, n int) ([]byte, error) {
	var raw [sharedNameLen]byte
	if _, err := io.ReadFull(r, raw[:]); err != nil {
		return nil, bodyErr(err)
	}
	name := string(raw[:])
	if i := indexZero(raw[:]); i >= 0 {
		name = string(raw[:i])
	}
	if !sharedName.MatchString(name) {
		return nil, fmt.Errorf("%w: shared payload name %q", ErrHeader, name)
	}
	dir, file, _ := strings.Cut(name, "/")
	f, err := openShared(dir, file)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrShared, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != int64(n) {
		return nil, fmt.Errorf("%w: shared payload is not a file of the %d bytes the header announces", ErrTruncated, n)
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, fmt.Errorf("%w: shared payload: %v", ErrTruncated, err)
	}
	return buf, nil
}

func indexZero(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}
