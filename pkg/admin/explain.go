package admin

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/svidd/svidd/pkg/entry"
)

// Explainer answers "why does this workload get (no) identity?": the agent derives a
// caller's selectors as it does for a connection and matches them against the entries.
type Explainer interface {
	// ExplainPID explains the live process pid as if it connected now.
	ExplainPID(ctx context.Context, pid int) (Explanation, error)
	// ExplainUID explains a process of uid, from the selectors a uid alone gives (a real
	// process adds its binary, cgroup and namespaces).
	ExplainUID(ctx context.Context, uid uint32) (Explanation, error)
	// Callers returns the last callers the agent attested, newest first.
	Callers() []Caller
	// Warnings returns what makes e's selectors impossible for svidd to derive on this host
	// (a user that does not exist, a binary svidd may not read): an entry that can never
	// match anyone, reported when it is written.
	Warnings(e entry.Entry) []string
}

// Explanation is a caller's selectors, the entries it matches and the nearest it does not.
type Explanation struct {
	PID       int32      `json:"pid,omitempty"`
	UID       uint32     `json:"uid"`
	GID       uint32     `json:"gid"`
	Selectors []string   `json:"selectors"`
	Matched   []Entry    `json:"matched"`
	NearMiss  []NearMiss `json:"near_misses"`
	// Notes say what limits the answer (svidd cannot read other users' binaries; -uid knows
	// nothing of the process).
	Notes []string `json:"notes,omitempty"`
}

// NearMiss is an entry the caller does not match and the selectors it lacks.
type NearMiss struct {
	Entry   Entry    `json:"entry"`
	Missing []string `json:"missing"`
}

// Caller is one attested caller the agent saw.
type Caller struct {
	At        time.Time `json:"at"`
	PID       int32     `json:"pid"`
	UID       uint32    `json:"uid"`
	GID       uint32    `json:"gid"`
	RPC       string    `json:"rpc"`
	Selectors []string  `json:"selectors"`
	SPIFFEIDs []string  `json:"spiffe_ids"`
}

// ExplanationFrom builds the wire form of an index's answer.
func ExplanationFrom(sel []entry.Selector, matched []entry.Entry, near []entry.NearMiss) Explanation {
	x := Explanation{Selectors: selectorStrings(sel), Matched: []Entry{}, NearMiss: []NearMiss{}}
	for _, e := range matched {
		x.Matched = append(x.Matched, EntryToWire(e))
	}
	for _, n := range near {
		x.NearMiss = append(x.NearMiss, NearMiss{Entry: EntryToWire(n.Entry), Missing: selectorStrings(n.Missing)})
	}
	return x
}

func selectorStrings(sel []entry.Selector) []string {
	out := make([]string, len(sel))
	for i, s := range sel {
		out[i] = s.String()
	}
	return out
}

func (s *Server) registerExplain() {
	ex := s.cfg.Explainer
	if ex == nil {
		return
	}
	s.mux.HandleFunc("GET /v1/explain", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var x Explanation
		var err error
		switch {
		case q.Get("pid") != "":
			pid, perr := strconv.Atoi(q.Get("pid"))
			if perr != nil || pid <= 0 {
				writeJSON(w, http.StatusBadRequest, Error{Error: fmt.Sprintf("pid %q is not a process id", q.Get("pid"))})
				return
			}
			x, err = ex.ExplainPID(r.Context(), pid)
		case q.Get("uid") != "":
			uid, perr := strconv.ParseUint(q.Get("uid"), 10, 32)
			if perr != nil {
				writeJSON(w, http.StatusBadRequest, Error{Error: fmt.Sprintf("uid %q is not a user id", q.Get("uid"))})
				return
			}
			x, err = ex.ExplainUID(r.Context(), uint32(uid))
		default:
			writeJSON(w, http.StatusBadRequest, Error{Error: "give pid or uid"})
			return
		}
		if err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, Error{Error: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, x)
	})
	s.mux.HandleFunc("GET /v1/callers", func(w http.ResponseWriter, r *http.Request) {
		cs := ex.Callers()
		if cs == nil {
			cs = []Caller{}
		}
		writeJSON(w, http.StatusOK, cs)
	})
}

// warnings returns what the Explainer says is wrong with e, logged for the operator.
func (s *Server) warnings(e entry.Entry) []string {
	if s.cfg.Explainer == nil {
		return nil
	}
	ws := s.cfg.Explainer.Warnings(e)
	for _, w := range ws {
		s.log.Warn("entry can never match on this host", "spiffe_id", e.SPIFFEID.String(), "warning", w)
	}
	return ws
}

// ExplainPID asks svidd why process pid gets the identities it gets.
func (c *Client) ExplainPID(ctx context.Context, pid int) (Explanation, error) {
	var x Explanation
	err := c.do(ctx, http.MethodGet, "/v1/explain?pid="+strconv.Itoa(pid), nil, &x)
	return x, err
}

// ExplainUID asks svidd what a process of uid gets.
func (c *Client) ExplainUID(ctx context.Context, uid uint32) (Explanation, error) {
	var x Explanation
	err := c.do(ctx, http.MethodGet, "/v1/explain?"+url.Values{"uid": {strconv.FormatUint(uint64(uid), 10)}}.Encode(), nil, &x)
	return x, err
}

// Callers lists the last callers svidd attested, newest first.
func (c *Client) Callers(ctx context.Context) ([]Caller, error) {
	var cs []Caller
	err := c.do(ctx, http.MethodGet, "/v1/callers", nil, &cs)
	return cs, err
}
