package entry

import (
	"slices"
	"strings"
)

// Index holds entries in memory for matching callers against them. It is not safe for
// concurrent use; the owner (the agent) serializes access.
//
// Each entry is filed under exactly one of its selectors, its anchor, chosen as the selector
// shared by the fewest entries when the entry is put. An entry can only match a caller that
// has every one of its selectors, so in particular its anchor: looking up the caller's
// selectors finds every candidate exactly once, and each candidate is then checked in full.
// Filing under one (rare) selector rather than all of them keeps Match proportional to the
// entries that could plausibly match, even when many entries share a common selector such as
// unix:namespace:host.
type Index struct {
	byID map[string]*indexed
	// byAnchor files every entry with at least one selector under its anchor.
	byAnchor map[Selector]map[string]*indexed
	// selCount counts entries using each selector (to choose anchors).
	selCount map[Selector]int
	// kindCount counts selectors of each "type:kind", for UsesSelectorKind.
	kindCount map[string]int
	// Entries with a unix:sha256 selector are filed a second time for NeedsDigest: under
	// their rarest selector of another kind (byDigestAnchor), or, when they have no other
	// kind, in digestOnly. A caller attested without the digest can only be matched by such
	// an entry if it has that second anchor.
	byDigestAnchor map[Selector]map[string]*indexed
	digestOnly     map[string]*indexed
}

type indexed struct {
	e      Entry
	anchor Selector
	// digestAnchor is the entry's anchor in byDigestAnchor (digest set), or it is in
	// digestOnly (digestOnly set); neither for an entry without a unix:sha256 selector.
	digestAnchor Selector
	digest       bool
	digestOnly   bool
}

// KindSHA256 is the "type:kind" of the binary digest selector, the one selector whose
// attestation is costly (the caller's binary is read in full).
const KindSHA256 = "unix:sha256"

// NewIndex returns an empty index.
func NewIndex() *Index {
	return &Index{
		byID:           make(map[string]*indexed),
		byAnchor:       make(map[Selector]map[string]*indexed),
		selCount:       make(map[Selector]int),
		kindCount:      make(map[string]int),
		byDigestAnchor: make(map[Selector]map[string]*indexed),
		digestOnly:     make(map[string]*indexed),
	}
}

// Len returns the number of entries.
func (x *Index) Len() int { return len(x.byID) }

// Get returns the entry with the given ID, its selectors normalized. The returned entry shares
// its slices with the index; do not modify them.
func (x *Index) Get(id string) (Entry, bool) {
	r, ok := x.byID[id]
	if !ok {
		return Entry{}, false
	}
	return r.e, true
}

// Put inserts e, or replaces the entry with the same ID. The index keeps its own normalized
// copy of the selectors and DNS names, so the caller may reuse e's slices.
func (x *Index) Put(e Entry) {
	x.Delete(e.ID)
	e.Selectors = Normalize(e.Selectors)
	e.DNSNames = slices.Clone(e.DNSNames)
	r := &indexed{e: e}
	x.byID[e.ID] = r
	for i, s := range e.Selectors {
		// Choose the anchors before counting this entry, so ties go to the first selector.
		if i == 0 || x.selCount[s] < x.selCount[r.anchor] {
			r.anchor = s
		}
		if selectorKind(s) == KindSHA256 {
			r.digest = true
		} else if (r.digestAnchor == Selector{} || x.selCount[s] < x.selCount[r.digestAnchor]) {
			r.digestAnchor = s
		}
	}
	if r.digest && r.digestAnchor == (Selector{}) {
		r.digestOnly = true
	}
	for _, s := range e.Selectors {
		x.selCount[s]++
		x.kindCount[selectorKind(s)]++
	}
	if len(e.Selectors) == 0 {
		// An entry without selectors is invalid and matches no caller (see Matches); it is
		// kept only so Get and Len agree with what was put.
		return
	}
	file(x.byAnchor, r.anchor, r)
	switch {
	case r.digestOnly:
		x.digestOnly[e.ID] = r
	case r.digest:
		file(x.byDigestAnchor, r.digestAnchor, r)
	}
}

func file(m map[Selector]map[string]*indexed, anchor Selector, r *indexed) {
	bucket := m[anchor]
	if bucket == nil {
		bucket = make(map[string]*indexed)
		m[anchor] = bucket
	}
	bucket[r.e.ID] = r
}

func unfile(m map[Selector]map[string]*indexed, anchor Selector, id string) {
	if bucket := m[anchor]; bucket != nil {
		delete(bucket, id)
		if len(bucket) == 0 {
			delete(m, anchor)
		}
	}
}

// Delete removes the entry with the given ID, if present.
func (x *Index) Delete(id string) {
	r, ok := x.byID[id]
	if !ok {
		return
	}
	delete(x.byID, id)
	for _, s := range r.e.Selectors {
		decrement(x.selCount, s)
		decrement(x.kindCount, selectorKind(s))
	}
	if len(r.e.Selectors) == 0 {
		return
	}
	unfile(x.byAnchor, r.anchor, id)
	switch {
	case r.digestOnly:
		delete(x.digestOnly, id)
	case r.digest:
		unfile(x.byDigestAnchor, r.digestAnchor, id)
	}
}

func decrement[K comparable](m map[K]int, k K) {
	if m[k] <= 1 {
		delete(m, k)
		return
	}
	m[k]--
}

// Match returns every entry whose selectors are all among callerSelectors (in any order,
// duplicates allowed), ordered by SPIFFE ID string, then entry ID. That order is the
// documented default-SVID rule: a caller's default SVID is the first entry returned. The
// returned entries share their slices with the index; do not modify them.
func (x *Index) Match(callerSelectors []Selector) []Entry {
	caller := Normalize(callerSelectors)
	var out []Entry
	for _, s := range caller {
		for _, r := range x.byAnchor[s] {
			if containsAll(caller, r.e.Selectors) {
				out = append(out, r.e)
			}
		}
	}
	slices.SortFunc(out, compareForMatch)
	return out
}

func compareForMatch(a, b Entry) int {
	if c := strings.Compare(a.SPIFFEID.String(), b.SPIFFEID.String()); c != 0 {
		return c
	}
	return strings.Compare(a.ID, b.ID)
}

// containsAll reports whether the sorted, deduplicated set has every element of want.
func containsAll(set, want []Selector) bool {
	for _, s := range want {
		if _, ok := slices.BinarySearchFunc(set, s, Selector.Compare); !ok {
			return false
		}
	}
	return true
}

// UsesSelectorKind reports whether any entry uses a selector of the given "type:kind", e.g.
// "unix:sha256". The agent asks before doing expensive attestation (hashing a binary) that
// no entry could use.
func (x *Index) UsesSelectorKind(typeAndKind string) bool {
	return x.kindCount[typeAndKind] > 0
}

// NeedsDigest reports whether the binary digest could change which entries match a caller
// with these selectors (attested without the digest): whether some entry with a unix:sha256
// selector has all its other selectors among the caller's. The agent asks before hashing the
// caller's binary, so that a caller no sha256 entry could match costs no hashing, whatever
// binary it runs.
func (x *Index) NeedsDigest(callerSelectors []Selector) bool {
	if len(x.digestOnly) > 0 {
		return true
	}
	caller := Normalize(callerSelectors)
	for _, s := range caller {
		for _, r := range x.byDigestAnchor[s] {
			if containsAllBut(caller, r.e.Selectors, KindSHA256) {
				return true
			}
		}
	}
	return false
}

// NeedsDigestFor reports whether e has a unix:sha256 selector and every one of its other
// selectors is among callerSelectors (which need not be sorted): a caller attested without
// its binary's digest must be attested with it to know whether e matches.
func NeedsDigestFor(e Entry, callerSelectors []Selector) bool {
	digest := false
	for _, s := range e.Selectors {
		if selectorKind(s) == KindSHA256 {
			digest = true
		} else if !slices.Contains(callerSelectors, s) {
			return false
		}
	}
	return digest
}

// containsAllBut is containsAll for want's selectors not of the given kind.
func containsAllBut(set, want []Selector, kind string) bool {
	for _, s := range want {
		if selectorKind(s) == kind {
			continue
		}
		if _, ok := slices.BinarySearchFunc(set, s, Selector.Compare); !ok {
			return false
		}
	}
	return true
}

// selectorKind returns "type:kind" for a selector whose value is "kind:value".
func selectorKind(s Selector) string {
	kind, _, _ := strings.Cut(s.Value, ":")
	return s.Type + ":" + kind
}

// Matches reports whether every selector of e is among callerSelectors (which need not be
// sorted). An entry with no selectors matches nobody: an empty set is vacuously a subset of
// anything, and granting an identity to every caller must never be the result of a missing
// field.
func Matches(e Entry, callerSelectors []Selector) bool {
	if len(e.Selectors) == 0 {
		return false
	}
	for _, s := range e.Selectors {
		if !slices.Contains(callerSelectors, s) {
			return false
		}
	}
	return true
}
