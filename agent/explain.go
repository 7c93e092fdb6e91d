package agent

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/attestor"
	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/peercred"
	"github.com/svidd/svidd/pkg/workload"
)

// "Why does my workload get no identity?" The agent answers with the selectors it derives for
// a caller (as for a real connection), the entries they match and the nearest they do not;
// it remembers its last callers, logs once per caller that got nothing, and warns when an
// entry names a selector it can never derive on this host.

var _ admin.Explainer = (*Agent)(nil)

const (
	// maxNearMisses bounds the near misses an explanation lists.
	maxNearMisses = 5
	// recentCallers is how many callers `svidctl callers` can show.
	recentCallers = 64
	// noIdentityMemory bounds the callers remembered as already logged; past it the memory
	// starts afresh (a caller may then be logged once more).
	noIdentityMemory = 4096
	// noIdentityPerSecond bounds the "no identity" lines, whatever the number of callers.
	noIdentityPerSecond = 10
)

// callerLog holds the recent callers and the rate limit of the "no identity" log.
type callerLog struct {
	mu     sync.Mutex
	ring   [recentCallers]seenCaller
	next   int
	n      int
	logged map[callerKey]struct{}
	second time.Time // start of the current one-second window
	inSec  int       // lines logged in it
}

type seenCaller struct {
	at       time.Time
	pid      int32
	uid, gid uint32
	rpc      string
	sel      []entry.Selector // shared with the attestation; never modified
	ids      []spiffeid.ID
	// partial: the caller was served a Partial View, entitled to something; which identities
	// is looked up from sel when the callers are listed, not on the stream's hot path.
	partial bool
}

type callerKey struct {
	pid int32
	uid uint32
}

// sawCaller records a caller and what it was entitled to (ids, or partial: something, to be
// looked up when listed); one that got nothing is logged at Info, once per caller and within
// the rate limit, with its selectors and the nearest entry's missing ones: the first place an
// operator looks.
func (a *Agent) sawCaller(p *peercred.Peer, sel []entry.Selector, rpc string, ids []spiffeid.ID, partial bool) {
	now := time.Now()
	l := &a.callers
	l.mu.Lock()
	rec := seenCaller{at: now, pid: p.PID, uid: p.UID, gid: p.GID, rpc: rpc, sel: sel, ids: ids, partial: partial}
	if last := &l.ring[(l.next-1+recentCallers)%recentCallers]; l.n > 0 && last.pid == p.PID && last.uid == p.UID && last.rpc == rpc {
		*last = rec // the same caller retrying: one line, the latest
	} else {
		l.ring[l.next] = rec
		l.next = (l.next + 1) % recentCallers
		l.n = min(l.n+1, recentCallers)
	}
	logIt := false
	if len(ids) == 0 && !partial {
		k := callerKey{p.PID, p.UID}
		if _, done := l.logged[k]; !done {
			if now.Sub(l.second) >= time.Second {
				l.second, l.inSec = now, 0
			}
			if l.inSec < noIdentityPerSecond {
				l.inSec++
				if l.logged == nil || len(l.logged) >= noIdentityMemory {
					l.logged = make(map[callerKey]struct{})
				}
				l.logged[k] = struct{}{}
				logIt = true
			}
		}
	}
	l.mu.Unlock()
	if !logIt {
		return
	}
	args := []any{"rpc", rpc, "pid", p.PID, "uid", p.UID, "gid", p.GID, "selectors", selectorList(sel)}
	if _, near := a.cache.explain(sel, 1); len(near) > 0 {
		args = append(args, "nearest_entry", near[0].Entry.SPIFFEID.String(), "nearest_entry_id", near[0].Entry.ID,
			"missing", selectorList(near[0].Missing))
	} else {
		args = append(args, "nearest_entry", "none (no entries)")
	}
	a.log.Info("caller got no identity (svidctl explain -pid PID tells why)", args...)
}

// viewIDs are the identities a complete View serves (none for an empty one).
func viewIDs(v *workload.View) []spiffeid.ID {
	ids := make([]spiffeid.ID, 0, len(v.SVIDs))
	for _, s := range v.SVIDs {
		ids = append(ids, s.ID)
	}
	return ids
}

func selectorList(sel []entry.Selector) string {
	out := make([]string, len(sel))
	for i, s := range sel {
		out[i] = s.String()
	}
	return strings.Join(out, ",")
}

// explain matches sel against every entry (under the cache's lock: see Index.Explain).
func (c *cache) explain(sel []entry.Selector, maxNear int) ([]entry.Entry, []entry.NearMiss) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.index.Explain(sel, maxNear)
}

// ExplainPID implements admin.Explainer: the process is attested exactly as a connection from
// it would be (with the binary's digest when an entry with unix:sha256 could match it).
func (a *Agent) ExplainPID(ctx context.Context, pid int) (admin.Explanation, error) {
	p, err := a.att.PeerOf(pid)
	if err != nil {
		return admin.Explanation{}, err
	}
	defer p.Close()
	sel, err := a.att.Attest(ctx, p, attestor.Options{})
	if err == nil && a.cache.needsDigest(entry.WithNode(sel, a.node)) {
		sel, err = a.att.Attest(ctx, p, attestor.Options{Digest: true})
	}
	if err != nil {
		return admin.Explanation{}, err
	}
	sel = entry.WithNode(sel, a.node) // as record does for a connection
	matched, near := a.cache.explain(sel, maxNearMisses)
	x := admin.ExplanationFrom(sel, matched, near)
	x.PID, x.UID, x.GID = p.PID, p.UID, p.GID
	if !hasKind(sel, "path") && !canReadOthersBinaries() {
		x.Notes = append(x.Notes, fmt.Sprintf("svidd (uid %d, without CAP_SYS_PTRACE) cannot read this process's binary: it gets no unix:path or unix:sha256 selector", os.Geteuid()))
	}
	return x, nil
}

// ExplainUID implements admin.Explainer from what a uid alone gives: unix:uid, unix:user and
// the user's primary group (unix:gid, unix:group). A process adds its binary, cgroup and
// namespaces, and may run with another gid.
func (a *Agent) ExplainUID(ctx context.Context, uid uint32) (admin.Explanation, error) {
	sel := []entry.Selector{{Type: entry.TypeUnix, Value: "uid:" + strconv.FormatUint(uint64(uid), 10)}}
	x := admin.Explanation{UID: uid}
	if name, ok := a.att.UserName(uid); ok {
		sel = append(sel, entry.Selector{Type: entry.TypeUnix, Value: "user:" + name})
		if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
			if gid, err := strconv.ParseUint(u.Gid, 10, 32); err == nil {
				x.GID = uint32(gid)
				sel = append(sel, entry.Selector{Type: entry.TypeUnix, Value: "gid:" + u.Gid})
				if g, ok := a.att.GroupName(uint32(gid)); ok {
					sel = append(sel, entry.Selector{Type: entry.TypeUnix, Value: "group:" + g})
				}
			}
		}
	}
	sel = append(sel, a.node...) // as record does for a connection; Explain normalizes
	matched, near := a.cache.explain(sel, maxNearMisses)
	out := admin.ExplanationFrom(sel, matched, near)
	out.UID, out.GID = x.UID, x.GID
	out.Notes = []string{"from the uid alone: a process of this uid also has unix:path, unix:sha256, unix:cgroup, systemd:unit and unix:namespace selectors (svidctl explain -pid PID shows them)"}
	return out, nil
}

// Callers implements admin.Explainer.
func (a *Agent) Callers() []admin.Caller {
	l := &a.callers
	l.mu.Lock()
	seen := make([]seenCaller, 0, l.n)
	for i := 1; i <= l.n; i++ {
		seen = append(seen, l.ring[(l.next-i+recentCallers)%recentCallers])
	}
	l.mu.Unlock()
	out := make([]admin.Caller, 0, len(seen))
	for _, s := range seen {
		c := admin.Caller{At: s.at.UTC(), PID: s.pid, UID: s.uid, GID: s.gid, RPC: s.rpc, SPIFFEIDs: []string{}}
		for _, sl := range s.sel {
			c.Selectors = append(c.Selectors, sl.String())
		}
		ids := s.ids
		if s.partial {
			ids = a.cache.entitledIDs(s.sel)
		}
		for _, id := range ids {
			c.SPIFFEIDs = append(c.SPIFFEIDs, id.String())
		}
		out = append(out, c)
	}
	return out
}

// Warnings implements admin.Explainer: selectors svidd can never derive on this host. Node
// selectors are never warned about: entries are fleet-wide, and one naming another host or a
// group this host is not in is meant for the hosts that have it.
func (a *Agent) Warnings(e entry.Entry) []string {
	var out []string
	for _, s := range e.Selectors {
		if s.Type != entry.TypeUnix {
			continue
		}
		kind, value, _ := strings.Cut(s.Value, ":")
		switch kind {
		case "user":
			if _, err := user.Lookup(value); err != nil {
				out = append(out, fmt.Sprintf("%s: there is no user %q on this host, so no caller has this selector", s, value))
			}
		case "group":
			if _, err := user.LookupGroup(value); err != nil {
				out = append(out, fmt.Sprintf("%s: there is no group %q on this host, so no caller has this selector", s, value))
			}
		case "path", "sha256":
			if !canReadOthersBinaries() {
				out = append(out, fmt.Sprintf("%s: svidd runs as uid %d without CAP_SYS_PTRACE and cannot read other users' binaries: only processes of uid %d get this selector", s, os.Geteuid(), os.Geteuid()))
			}
		}
	}
	return out
}

// warnConfigEntries logs the Warnings of the config file's entries (the admin API returns
// them for entries written through it).
func (a *Agent) warnConfigEntries(es []entry.Entry) {
	for _, e := range es {
		for _, w := range a.Warnings(e) {
			a.log.Warn("config entry can never match on this host", "entry", e.Name, "spiffe_id", e.SPIFFEID.String(), "warning", w)
		}
	}
}

func hasKind(sel []entry.Selector, kind string) bool {
	for _, s := range sel {
		if s.Type == entry.TypeUnix && strings.HasPrefix(s.Value, kind+":") {
			return true
		}
	}
	return false
}

// canReadOthersBinaries reports whether svidd may read /proc/PID/exe of other users'
// processes: as root, or with CAP_SYS_PTRACE in its effective set.
func canReadOthersBinaries() bool {
	if os.Geteuid() == 0 {
		return true
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			const capSysPtrace = 19
			return err == nil && caps&(1<<capSysPtrace) != 0
		}
	}
	return false
}
