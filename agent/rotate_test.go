package agent

import (
	"math"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/ca"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/workload"
)

// TestMinSVIDTTLRotatesBeforeExpiry holds entry.MinSVIDTTL's derivation against real
// certificates: SVIDs of the shortest lifetime, minted by the real CA at every phase of the
// second (X.509 keeps whole seconds), with the rotation jitter at both ends, fall due for
// rotation at least a second after they were minted (so a rotation never chains into another
// at once) and keep at least two seconds of validity after it (for the mint and the push).
func TestMinSVIDTTLRotatesBeforeExpiry(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := base
	authority, err := ca.New(ca.Config{TrustDomain: td, Dir: t.TempDir(), Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromSegments(td, "short")
	worstDelay, worstLeft := time.Hour, time.Hour
	for ms := 0; ms < 3000; ms += 25 {
		now = base.Add(time.Minute + time.Duration(ms)*time.Millisecond)
		s, err := authority.MintX509SVID(id, entry.MinSVIDTTL, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range []float64{0, math.Nextafter(1, 0)} { // RotateAt's r is in [0,1)
			at := workload.RotateAt(s.NotBefore, s.NotAfter, r)
			worstDelay = min(worstDelay, at.Sub(now))
			worstLeft = min(worstLeft, s.NotAfter.Sub(at))
		}
	}
	t.Logf("TTL %s: rotation at least %s after the mint, at least %s left at rotation", entry.MinSVIDTTL, worstDelay, worstLeft)
	if worstDelay < time.Second || worstLeft < 2*time.Second {
		t.Fatalf("TTL %s: rotation %s after the mint, %s left at rotation; want at least 1s and 2s", entry.MinSVIDTTL, worstDelay, worstLeft)
	}
	// One second less is refused, by the CA as by every other caller.
	if _, err := authority.MintX509SVID(id, entry.MinSVIDTTL-time.Second, nil); err == nil {
		t.Fatalf("the CA minted a %s SVID", entry.MinSVIDTTL-time.Second)
	}
}
