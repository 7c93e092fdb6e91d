package workload

import (
	"crypto/sha256"
	"encoding/binary"
	"time"
)

// RotateAt is when an SVID valid from nb to na is replaced: at half its lifetime, moved by up
// to ±10% of that half (r in [0,1)), i.e. between 45% and 55% of the lifetime, so that SVIDs
// minted together do not all rotate in the same instant.
func RotateAt(nb, na time.Time, r float64) time.Time {
	half := na.Sub(nb) / 2
	jitter := time.Duration((r*2 - 1) * 0.1 * float64(half))
	return nb.Add(half + jitter)
}

// RotationJitter is the r of RotateAt for the SVID whose leaf has this serial number
// (lowercase hex, as SVID.Serial and big.Int.Text(16) write it): as random as the serial
// (svidd's are 128 random bits), yet computable by anyone holding the certificate, so a
// workload (`svidctl svid fetch`) shows the rotation time the agent will use.
func RotationJitter(serialHex string) float64 {
	sum := sha256.Sum256([]byte(serialHex))
	return float64(binary.BigEndian.Uint64(sum[:8])>>11) / (1 << 53)
}
