package dht

import (
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"
)

func newKey(t testing.TB) (crypto.PrivKey, peer.ID) {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return k, id
}

// signedGood returns a new peer's goodRecord, signed, valid at now.
func signedGood(t testing.TB, now time.Time) (peer.ID, []byte) {
	t.Helper()
	key, id := newKey(t)
	b, err := Sign(goodRecord(id, now), key)
	if err != nil {
		t.Fatal(err)
	}
	return id, b
}

func goodRecord(id peer.ID, now time.Time) PeerRecord {
	return PeerRecord{
		Run: "r1", Peer: id, Stage: 2, Role: RoleServer, Throughput: 1234.5, Queue: 3,
		Addrs: []string{"/ip4/127.0.0.1/tcp/4001"}, Seq: 7, Expires: now.Add(time.Minute).UnixMilli(),
	}
}

// sealRaw signs any record content with key, bypassing Sign's own checks, the
// way a forger would.
func sealRaw(t testing.TB, rec PeerRecord, key crypto.PrivKey) []byte {
	t.Helper()
	env, err := record.Seal(payload{&rec}, key)
	if err != nil {
		t.Fatal(err)
	}
	b, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStageCIDStable(t *testing.T) {
	// The CID is a protocol constant; the expected value was computed with Python:
	// "b" + base32(0x01 0x55 0x12 0x20 || sha256(key)), lower case, unpadded.
	c := StageCID("tiny-shakespeare", 1)
	if c.Version() != 1 || c.Type() != 0x55 {
		t.Fatalf("cid %s: version %d codec %#x, want v1 raw", c, c.Version(), c.Type())
	}
	const want = "bafkreicpvhxcjxgfpwv43godftuk6desffqp7vc2cf6mpcjojwbwb727wi"
	if c.String() != want {
		t.Fatalf("StageCID = %s, want %s", c, want)
	}
	if StageCID("tiny-shakespeare", 0).Equals(c) || StageCID("other", 1).Equals(c) {
		t.Fatal("distinct stages or runs share a CID")
	}
}

func TestPeerKeyRoundTrip(t *testing.T) {
	_, id := newKey(t)
	k := PeerKey("r1", id)
	if !strings.HasPrefix(k, "/swarmnode/r1/peer/") {
		t.Fatalf("key %q", k)
	}
	run, got, err := ParsePeerKey(k)
	if err != nil || run != "r1" || got != id {
		t.Fatalf("ParsePeerKey(%q) = %q, %s, %v", k, run, got, err)
	}
	for _, bad := range []string{"", "/swarmnode", "/swarmnode/r1/peer", "/swarmnode/r1/peers/" + id.String(),
		"/pk/" + id.String(), "/swarmnode//peer/" + id.String(), "/swarmnode/r1/peer/notapeer", "/swarmnode/r1/peer/" + id.String() + "/x"} {
		if _, _, err := ParsePeerKey(bad); err == nil {
			t.Errorf("ParsePeerKey(%q) accepted", bad)
		}
	}
}

func TestValidatorAcceptsGoodRecord(t *testing.T) {
	now := time.Now()
	id, b := signedGood(t, now)
	v := Validator{Run: "r1"}
	if err := v.Validate(PeerKey("r1", id), b); err != nil {
		t.Fatalf("good record rejected: %v", err)
	}
	rec, err := Open(b, now)
	if err != nil || rec.Stage != 2 || rec.Throughput != 1234.5 || rec.Seq != 7 {
		t.Fatalf("Open = %+v, %v", rec, err)
	}
}

func TestValidatorRejects(t *testing.T) {
	key, id := newKey(t)
	_, other := newKey(t)
	now := time.Now()
	good := goodRecord(id, now)
	signed := func(mut func(*PeerRecord)) []byte {
		r := good
		r.Addrs = append([]string(nil), good.Addrs...)
		mut(&r)
		return sealRaw(t, r, key)
	}
	goodBytes := signed(func(*PeerRecord) {})
	tampered := append([]byte(nil), goodBytes...)
	// Flip a byte of the JSON payload ("stage":2 -> "stage":3) after signing.
	i := strings.Index(string(tampered), `"stage":2`)
	if i < 0 {
		t.Fatal("payload not found in envelope")
	}
	tampered[i+len(`"stage":`)] = '3'

	cases := []struct {
		name, key string
		val       []byte
		want      string
	}{
		{"tampered", PeerKey("r1", id), tampered, "signature"},
		{"signer is not the key's peer", PeerKey("r1", other), goodBytes, "describes"},
		{"record names another peer than its signer", PeerKey("r1", other),
			sealRaw(t, func() PeerRecord { r := good; r.Peer = other; return r }(), key), "signed by"},
		{"expired", PeerKey("r1", id), signed(func(r *PeerRecord) { r.Expires = now.Add(-MaxClockSkew - time.Second).UnixMilli() }), "expired"},
		{"expiry too far", PeerKey("r1", id), signed(func(r *PeerRecord) { r.Expires = now.Add(48 * time.Hour).UnixMilli() }), "more than"},
		{"other run in key", PeerKey("r2", id), goodBytes, "run"},
		{"other run in record", PeerKey("r1", id), signed(func(r *PeerRecord) { r.Run = "r2" }), "run"},
		{"bad role", PeerKey("r1", id), signed(func(r *PeerRecord) { r.Role = "king" }), "role"},
		{"negative throughput", PeerKey("r1", id), signed(func(r *PeerRecord) { r.Throughput = -1 }), "throughput"},
		{"negative queue", PeerKey("r1", id), signed(func(r *PeerRecord) { r.Queue = -1 }), "queue"},
		{"stage out of range", PeerKey("r1", id), signed(func(r *PeerRecord) { r.Stage = MaxStages }), "stage"},
		{"bad addr", PeerKey("r1", id), signed(func(r *PeerRecord) { r.Addrs = []string{"/ip4/999.1.1.1/tcp/1"} }), "addr"},
		{"too many addrs", PeerKey("r1", id), signed(func(r *PeerRecord) {
			r.Addrs = make([]string, MaxAddrs+1)
			for i := range r.Addrs {
				r.Addrs[i] = "/ip4/127.0.0.1/tcp/1"
			}
		}), "addrs"},
		{"garbage", PeerKey("r1", id), []byte("not an envelope"), "envelope"},
		{"empty", PeerKey("r1", id), nil, ""},
		{"bad key", "/swarmnode/r1/peer/xyz", goodBytes, "peer id"},
		{"too big", PeerKey("r1", id), make([]byte, MaxRecordSize+1), "bytes"},
	}
	v := Validator{Run: "r1", Now: func() time.Time { return now }}
	for _, c := range cases {
		err := v.Validate(c.key, c.val)
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q does not mention %q", c.name, err, c.want)
		}
	}
}

func TestSignRefusesForeignPeer(t *testing.T) {
	key, _ := newKey(t)
	_, other := newKey(t)
	if _, err := Sign(goodRecord(other, time.Now()), key); err == nil {
		t.Fatal("Sign signed a record for another peer")
	}
}

func TestSelectBySeq(t *testing.T) {
	key, id := newKey(t)
	now := time.Now()
	mk := func(seq uint64) []byte {
		r := goodRecord(id, now)
		r.Seq = seq
		b, err := Sign(r, key)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	v := Validator{Run: "r1"}
	k := PeerKey("r1", id)
	i, err := v.Select(k, [][]byte{mk(3), []byte("junk"), mk(9), mk(5)})
	if err != nil || i != 2 {
		t.Fatalf("Select = %d, %v; want 2", i, err)
	}
	if _, err := v.Select(k, [][]byte{[]byte("junk")}); err == nil {
		t.Fatal("Select picked an invalid record")
	}
}

func TestDecodeLoad(t *testing.T) {
	good := `{"stage":1,"role":"server","throughput":10.5,"queue":2,"seq":9}`
	l, err := DecodeLoad([]byte(good))
	if err != nil || l.Stage != 1 || l.Queue != 2 || l.Seq != 9 {
		t.Fatalf("DecodeLoad = %+v, %v", l, err)
	}
	for _, bad := range []string{
		``, `{}`, `{"stage":-1,"role":"server","seq":1}`, `{"stage":1,"role":"trainer","seq":1}`,
		`{"stage":1,"role":"server","throughput":-2,"seq":1}`, `{"stage":1,"role":"server","queue":-2,"seq":1}`,
		`{"stage":1,"role":"server","seq":1,"extra":1}`, `{"stage":1,"role":"server","seq":1}{}`,
		`{"stage":1,"role":"server","throughput":1e999,"seq":1}`, `[1,2]`,
		`{"stage":1,"role":"server","seq":1,"pad":"` + strings.Repeat("x", MaxLoadSize) + `"}`,
	} {
		if _, err := DecodeLoad([]byte(bad)); err == nil {
			t.Errorf("DecodeLoad(%.60q) accepted", bad)
		}
	}
}

func FuzzValidate(f *testing.F) {
	id, good := signedGood(f, time.Now())
	f.Add(PeerKey("r1", id), good)
	f.Add(PeerKey("r1", id), []byte{})
	f.Add("/swarmnode/r1/peer/x", []byte("garbage"))
	f.Add(PeerKey("r1", id), good[:len(good)/2])
	v := Validator{Run: "r1"}
	f.Fuzz(func(t *testing.T, key string, val []byte) {
		err := v.Validate(key, val)
		if err == nil {
			// Whatever passes must really be a record of this run signed by the key's peer.
			rec, err2 := Open(val, time.Now())
			_, id, err3 := ParsePeerKey(key)
			if err2 != nil || err3 != nil || rec.Peer != id || rec.Run != "r1" {
				t.Fatalf("accepted %q: %v %v", key, err2, err3)
			}
		}
		_, _ = v.Select(key, [][]byte{val})
	})
}

func FuzzDecodeLoad(f *testing.F) {
	f.Add([]byte(`{"stage":1,"role":"server","throughput":10.5,"queue":2,"seq":9}`))
	f.Add([]byte(`{"stage":1,"role":"both","seq":1,"leaving":true}`))
	f.Add([]byte(`{"stage":`))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := DecodeLoad(b)
		if err == nil && (l.Stage < 0 || l.Queue < 0 || !(l.Throughput >= 0)) {
			t.Fatalf("accepted bad load %+v", l)
		}
	})
}
