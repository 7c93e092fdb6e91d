package entry

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// SVID lifetimes. These are the rules the CA (when configured and when minting), the config
// file (ca.svid_ttl, ca.jwt_svid_ttl, an entry's x509_svid_ttl) and the admin API (an entry's
// x509_svid_ttl) all apply; they are written here once and only called elsewhere.
const (
	// MinSVIDTTL is the shortest SVID lifetime (X.509 and JWT) accepted. The agent replaces an
	// X509-SVID at 45-55% of [NotBefore, NotAfter] (half, jittered ±10%); NotBefore is
	// backdated by min(10 s, TTL/10); and X.509 times are whole seconds (both bounds truncated,
	// so the lifetime can be a second shorter than asked and NotBefore a second earlier). In
	// the worst case of those, a TTL of T seconds puts the rotation about 0.45·T − 1 s after
	// the mint (−0.1 s for 2 s, 0.8 s for 4 s, 1.2 s for 5 s) and leaves 0.45·T s of validity
	// after it (1.8 s for 4 s, 2.25 s for 5 s). 5 s is the shortest whole-second TTL that keeps both
	// margins: a rotation at least a second after the mint (so a rotation never falls due at
	// once and mints in a loop, as 1 s TTLs did: 3,200 mints in 20 s), and at least 2 s left
	// at rotation for minting (an RSA-2048 key on a loaded host takes up to a second) and the
	// push to every stream (0.25 s to 10,000 streams measured). agent's
	// TestMinSVIDTTLRotatesBeforeExpiry checks these margins on minted certificates. A JWT-SVID
	// has whole-second times too, and is fetched, not pushed: the same floor applies.
	// Production lifetimes are minutes to hours; seconds are for tests that watch rotation.
	MinSVIDTTL = 5 * time.Second
	// MinCATTL is the shortest CA lifetime: six times MinSVIDTTL, so that every CA lifetime
	// accepted admits the shortest SVID lifetime (MaxSVIDTTL).
	MinCATTL = 6 * MinSVIDTTL
)

// MaxSVIDTTL is the longest SVID lifetime a CA living caTTL allows: a sixth of it. The CA
// publishes its successor at half its life and hands over to it when a sixth is left, so the
// successor has been in every bundle for a third of the life before it signs, and an SVID
// signed just before the hand-over expires before its signer leaves the bundle.
func MaxSVIDTTL(caTTL time.Duration) time.Duration { return caTTL / 6 }

// Errors CheckSVIDTTL's errors wrap (besides ErrInvalid): callers that branch on the reason.
var (
	ErrTTLTooShort = errors.New("SVID TTL too short to rotate before it expires")
	ErrTTLTooLong  = errors.New("SVID TTL longer than a sixth of the CA TTL")
)

// CheckSVIDTTL checks an SVID lifetime: at least MinSVIDTTL and, when caTTL is not zero, at
// most MaxSVIDTTL(caTTL). The error wraps ErrInvalid and ErrTTLTooShort or ErrTTLTooLong;
// its text starts with the value ("1s is shorter than the minimum 5s: ...") so callers prefix
// the name of the setting: fmt.Errorf("svid_ttl %w", err).
func CheckSVIDTTL(ttl, caTTL time.Duration) error {
	switch {
	case ttl < 0:
		return &ttlError{ErrTTLTooShort, fmt.Sprintf("%s is negative", FormatDuration(ttl))}
	case ttl < MinSVIDTTL:
		return &ttlError{ErrTTLTooShort, fmt.Sprintf("%s is shorter than the minimum %s: an SVID is replaced at about half its life, and with whole-second certificate times a shorter one could expire before its replacement reaches the workload",
			FormatDuration(ttl), FormatDuration(MinSVIDTTL))}
	case caTTL > 0 && ttl > MaxSVIDTTL(caTTL):
		return &ttlError{ErrTTLTooLong, fmt.Sprintf("%s is longer than a sixth of ca_ttl %s (%s): the CA could not rotate with overlap",
			FormatDuration(ttl), FormatDuration(caTTL), FormatDuration(MaxSVIDTTL(caTTL)))}
	}
	return nil
}

// CheckCATTL checks a CA lifetime: at least MinCATTL.
func CheckCATTL(caTTL time.Duration) error {
	if caTTL < MinCATTL {
		return &ttlError{ErrTTLTooShort, fmt.Sprintf("%s is shorter than the minimum %s (six times the shortest SVID lifetime, %s)",
			FormatDuration(caTTL), FormatDuration(MinCATTL), FormatDuration(MinSVIDTTL))}
	}
	return nil
}

type ttlError struct {
	kind error
	msg  string
}

func (e *ttlError) Error() string   { return e.msg }
func (e *ttlError) Unwrap() []error { return []error{ErrInvalid, e.kind} }

// FormatDuration prints a duration the way operators write one: 5h rather than Go's 5h0m0s.
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
