package wire

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"swarmnode/codec"
)

func newShm(t *testing.T) *Shm {
	t.Helper()
	m, err := NewShm()
	if errors.Is(err, ErrNoShm) {
		t.Skip("no /dev/shm here")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func shmFiles(t *testing.T, m *Shm) []string {
	t.Helper()
	ents, err := os.ReadDir(m.dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestSharedRoundTrip: a large payload goes through a file that the reader
// removes, a small one on the stream; both read back exactly, and the traffic
// counter counts the frame either way.
func TestSharedRoundTrip(t *testing.T) {
	m := newShm(t)
	var s buf
	var traffic Counter
	w := NewConn(&s, 1<<24, &traffic)
	w.ShareVia(m)
	big := randFloats(MinShared/4+100, 1)
	small := randFloats(1000, 2)
	enc := Encoding{Codec: codec.FP32}
	if err := w.WriteFloats(Header{Kind: Activations, ID: 7, B: 1, T: 1, D: len(big)}, big, enc, never); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteFloats(Header{Kind: Gradient, ID: 7, B: 1, T: 1, D: len(small)}, small, enc, never); err != nil {
		t.Fatal(err)
	}
	if s.Len() > 2*HeaderSize+sharedNameLen+4*len(small) {
		t.Fatalf("the stream carried %d bytes: the large payload was not shared", s.Len())
	}
	if got := traffic.Sent().Bytes; got != int64(2*HeaderSize+4*len(big)+4*len(small)) {
		t.Fatalf("traffic counted %d bytes", got)
	}
	if n := len(shmFiles(t, m)); n != 1 {
		t.Fatalf("%d shared files before the read, want 1", n)
	}
	r := NewConn(&s, 1<<24, nil)
	r.AcceptShared()
	for _, want := range [][]float32{big, small} {
		f, err := r.Read(never)
		if err != nil {
			t.Fatal(err)
		}
		if f.Shared() != (len(want) == len(big)) {
			t.Fatalf("frame of %d values: shared %v", len(want), f.Shared())
		}
		got, err := f.Floats(nil)
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("read back %d values (err %v), want %d equal ones", len(got), err, len(want))
		}
	}
	if n := shmFiles(t, m); len(n) != 0 {
		t.Fatalf("shared files left after the read: %v", n)
	}
}

// sharedFrame writes a frame of n float32 zeros through m and returns the
// stream's bytes and the file's path.
func sharedFrame(t *testing.T, m *Shm, n int) ([]byte, string) {
	t.Helper()
	var s buf
	w := NewConn(&s, 1<<24, nil)
	w.ShareVia(m)
	if err := w.WriteFloats(Header{Kind: Activations, B: 1, T: 1, D: n}, make([]float32, n), Encoding{Codec: codec.FP32}, never); err != nil {
		t.Fatal(err)
	}
	files := shmFiles(t, m)
	if len(files) != 1 {
		t.Fatalf("%d shared files", len(files))
	}
	return s.Bytes(), filepath.Join(m.dir, files[0])
}

func readFrame(b []byte, accept bool) error {
	var s buf
	s.Write(b)
	c := NewConn(&s, 1<<24, nil)
	if accept {
		c.AcceptShared()
	}
	_, err := c.Read(never)
	return err
}

// TestSharedRefusals: a stream that takes no shared payloads, a name not of a
// Shm's form, a missing file, a link and a file of the wrong length are all
// refused with the error that says what to do.
func TestSharedRefusals(t *testing.T) {
	m := newShm(t)
	n := MinShared / 4
	b, path := sharedFrame(t, m, n)
	if err := readFrame(b, false); !errors.Is(err, ErrShared) {
		t.Fatalf("shared frame on a stream that takes none: %v", err)
	}
	bad := slices.Clone(b)
	copy(bad[HeaderSize:], "../../../../etc/passwd\x00")
	if err := readFrame(bad, true); !errors.Is(err, ErrHeader) {
		t.Fatalf("a name outside the shared directory: %v", err)
	}
	// A link in place of the file: refused, and no file is read through it.
	if err := os.Rename(path, path+"x"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(path+"x", path); err != nil {
		t.Fatal(err)
	}
	if err := readFrame(b, true); !errors.Is(err, ErrShared) {
		t.Fatalf("a link: %v", err)
	}
	// A file one byte short of what the header announces.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, make([]byte, 4*n-1), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := readFrame(b, true); !errors.Is(err, ErrTruncated) {
		t.Fatalf("a short file: %v", err)
	}
	// Read once: the file is gone, and so is the frame's payload.
	if err := readFrame(b, true); !errors.Is(err, ErrShared) || CodeOf(err) != CodeShared {
		t.Fatalf("a missing file: %v (code %v)", err, CodeOf(err))
	}
}

// TestShmSweepsAndCloses: payloads nobody read are removed sharedTTL after
// they were written, and Close removes the directory.
func TestShmSweepsAndCloses(t *testing.T) {
	m := newShm(t)
	sharedFrame(t, m, MinShared/4)
	m.sweep("x", time.Now().Add(sharedTTL+time.Second))
	if n := shmFiles(t, m); len(n) != 0 {
		t.Fatalf("unread payload kept past its time: %v", n)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.dir); !os.IsNotExist(err) {
		t.Fatalf("directory left after Close: %v", err)
	}
}

// TestSharedFallsBackToStream: when the file cannot be written (a full or
// removed /dev/shm), the payload goes on the stream, readable by a peer that
// takes no shared payloads.
func TestSharedFallsBackToStream(t *testing.T) {
	m := newShm(t)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	var s buf
	w := NewConn(&s, 1<<24, nil)
	w.ShareVia(m)
	x := randFloats(MinShared/4, 3)
	if err := w.WriteFloats(Header{Kind: Activations, B: 1, T: 1, D: len(x)}, x, Encoding{Codec: codec.FP32}, never); err != nil {
		t.Fatal(err)
	}
	f, err := NewConn(&s, 1<<24, nil).Read(never)
	if err != nil || f.Shared() {
		t.Fatalf("read %v (shared %v)", err, f != nil && f.Shared())
	}
	if got, err := f.Floats(nil); err != nil || !slices.Equal(got, x) {
		t.Fatalf("read back %d values, err %v", len(got), err)
	}
}

// TestRemoveStale: the directory of a process that is gone, untouched for
// sharedTTL, is removed; a live process's is kept.
func TestRemoveStale(t *testing.T) {
	newShm(t) // skips without /dev/shm
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skip("cannot run a process to find a dead pid:", err)
	}
	old := time.Now().Add(-2 * sharedTTL)
	dead := filepath.Join(shmRoot, fmt.Sprintf("swarmnode-%d-%016x", cmd.Process.Pid, 1))
	live := filepath.Join(shmRoot, fmt.Sprintf("swarmnode-%d-%016x", os.Getpid(), 2))
	for _, d := range []string{dead, live} {
		if err := os.Mkdir(d, 0o711); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(d) })
		if err := os.Chtimes(d, old, old); err != nil {
			t.Fatal(err)
		}
	}
	removeStale(time.Now())
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("a dead process's directory was kept: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("a live process's directory went: %v", err)
	}
}

// TestSharedRefusesLinkedDirectory: a directory of a Shm's form that is a link
// elsewhere is not followed, and the file it points at is neither read nor
// removed.
func TestSharedRefusesLinkedDirectory(t *testing.T) {
	m := newShm(t)
	n := MinShared / 4
	b, path := sharedFrame(t, m, n)
	target := t.TempDir()
	victim := filepath.Join(target, filepath.Base(path))
	if err := os.WriteFile(victim, make([]byte, 4*n), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(shmRoot, fmt.Sprintf("swarmnode-1-%016x", 0xbad))
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(link) })
	bad := slices.Clone(b)
	clear(bad[HeaderSize:])
	copy(bad[HeaderSize:], filepath.Base(link)+"/"+filepath.Base(path))
	if err := readFrame(bad, true); !errors.Is(err, ErrShared) {
		t.Fatalf("a linked directory: %v", err)
	}
	if _, err := os.Stat(victim); err != nil {
		t.Fatalf("the file behind the link: %v", err)
	}
}
