package averaging

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"swarmnode/codec"
	"swarmnode/internal/wait"
)

// auditOptions audits every shard of every round, in chunks small enough that
// each shard has several.
func auditOptions(k codec.Kind) Options {
	return Options{ChunkFloats: 1500, Codec: k, AuditRate: 1, GroupSize: 8, Deadline: 6 * time.Second, Matchmaking: time.Second}
}

// TestAuditsPassHonest: honest reducers pass every audit, in every codec, with
// and without attested weights, and no one is evicted.
func TestAuditsPassHonest(t *testing.T) {
	for _, k := range []codec.Kind{codec.FP32, codec.BF16, codec.Int8} {
		t.Run(k.String(), func(t *testing.T) {
			const g = 4
			ms, _ := newRandGroup(t, 21, 20000, []float64{1, 2, 3, 4}, auditOptions(k))
			for r := uint64(1); r <= 2; r++ {
				if _, errs := roundAll(ms, r); firstErr(errs) != nil {
					t.Fatal(firstErr(errs))
				}
			}
			// Attested weights, as the commit's gradient all-reduce gives them.
			if _, errs := roundAllAmong(ms, 3, []float64{2, 2, 1, 1}); firstErr(errs) != nil {
				t.Fatal(firstErr(errs))
			}
			wait.For(t, 10*time.Second, func() error {
				for i, m := range ms {
					if st := m.avg.Stats(); st.Audits != 3*(g-1) {
						return fmt.Errorf("member %d passed %d audits, want %d", i, st.Audits, 3*(g-1))
					}
				}
				return nil
			})
			for i, m := range ms {
				if ev := m.avg.Evicted(); len(ev) != 0 {
					t.Errorf("member %d evicted %v", i, ev)
				}
			}
		})
	}
}

// TestLyingReducerCaught: a reducer that adds a small bias to every result it
// sends (small enough that each result still looks like an average) is caught
// by the first audit of each honest member, which evicts it.
func TestLyingReducerCaught(t *testing.T) {
	for _, k := range []codec.Kind{codec.FP32, codec.Int8} {
		t.Run(k.String(), func(t *testing.T) {
			ms, _ := newRandGroup(t, 22, 20000, equal(5), auditOptions(k))
			const bad = 2
			ms[bad].avg.o.Reducer = func(parts [][]float32, ws []float64, out []float32, outlier []bool) error {
				if err := CenteredClip(parts, ws, out, outlier); err != nil {
					return err
				}
				for i := range out {
					out[i] += 0.05
				}
				return nil
			}
			if _, errs := roundAll(ms, 1); firstErr(errs) != nil {
				t.Fatal(firstErr(errs))
			}
			liar := ms[bad].h.ID()
			wait.For(t, 10*time.Second, func() error {
				for i, m := range ms {
					if i == bad {
						continue
					}
					why, ok := m.avg.Evicted()[liar]
					if !ok {
						return fmt.Errorf("member %d has not evicted the lying reducer", i)
					}
					if !strings.Contains(why, "failed an audit") {
						return fmt.Errorf("member %d evicted it because %q", i, why)
					}
				}
				return nil
			})
			for i, m := range ms {
				if i != bad && len(m.avg.Evicted()) != 1 {
					t.Errorf("member %d evicted %v", i, m.avg.Evicted())
				}
			}
		})
	}
}

// TestReducerDodgingAudits: a reducer that answers no audit (its audit
// protocol is gone) is evicted after auditStrikes rounds in a row.
func TestReducerDodgingAudits(t *testing.T) {
	ms, _ := newRandGroup(t, 23, 9000, equal(3), auditOptions(codec.FP32))
	const bad = 0
	ms[bad].h.RemoveStreamHandler(ms[bad].avg.auditProto)
	liar := ms[bad].h.ID()
	for r := uint64(1); r <= auditStrikes; r++ {
		if _, errs := roundAll(ms, r); firstErr(errs) != nil {
			t.Fatal(firstErr(errs))
		}
		if r < auditStrikes {
			// Let this round's audits finish, so that the next round's
			// count in order; the liar is still a member.
			time.Sleep(300 * time.Millisecond)
			for i, m := range ms {
				if _, ok := m.avg.Evicted()[liar]; ok {
					t.Fatalf("member %d evicted it after %d rounds", i, r)
				}
			}
		}
	}
	wait.For(t, 10*time.Second, func() error {
		for i, m := range ms {
			if i == bad {
				continue
			}
			why, ok := m.avg.Evicted()[liar]
			if !ok || !strings.Contains(why, "answered none") {
				return fmt.Errorf("member %d: evicted %v, %q", i, ok, why)
			}
		}
		return nil
	})
}

// roundAllAmong runs round r on every member at once with attested weights.
func roundAllAmong(ms []*member, r uint64, weights []float64) ([]Result, []error) {
	res := make([]Result, len(ms))
	errs := make([]error, len(ms))
	done := make(chan struct{})
	holders := ids(hosts(ms))
	for i, m := range ms {
		go func() {
			res[i], errs[i] = m.avg.RoundAmong(context.Background(), r, holders, weights)
			done <- struct{}{}
		}()
	}
	for range ms {
		<-done
	}
	return res, errs
}

func firstErr(errs []error) error {
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("member %d: %w", i, err)
		}
	}
	return nil
}
