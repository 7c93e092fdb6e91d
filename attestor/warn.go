package attestor

import (
	"log/slog"
	"sync"
	"time"
)

// warnEvery is how often one kind of attestation warning is written. These warnings are
// about svidd's set-up (it cannot read other users' binaries or namespaces) or about one
// caller's binary (larger than max_binary_size), and every connecting process can trigger
// them: logged on every connection, any local user could fill the log and a core with them
// (issue 11, point 5). Once a minute says the same thing.
const warnEvery = time.Minute

// warnLimiter writes each kind of warning (its message) at most once per warnEvery; the next
// one written says how many were suppressed in between. The messages are constants, so the
// map holds a handful of keys.
type warnLimiter struct {
	now func() time.Time

	mu   sync.Mutex
	last map[string]warnState
}

type warnState struct {
	at         time.Time
	suppressed int
}

func newWarnLimiter(now func() time.Time) *warnLimiter {
	return &warnLimiter{now: now, last: map[string]warnState{}}
}

// warn writes msg with args to log unless a warning with the same msg was written less than
// warnEvery ago; a suppressed one goes to Debug.
func (w *warnLimiter) warn(log *slog.Logger, msg string, args ...any) {
	now := w.now()
	w.mu.Lock()
	st, seen := w.last[msg]
	if seen && now.Sub(st.at) < warnEvery {
		st.suppressed++
		w.last[msg] = st
		w.mu.Unlock()
		log.Debug(msg, args...)
		return
	}
	w.last[msg] = warnState{at: now}
	w.mu.Unlock()
	if st.suppressed > 0 {
		args = append(args, "suppressed_since_last", st.suppressed)
	}
	log.Warn(msg, args...)
}
