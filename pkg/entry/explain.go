package entry

import (
	"slices"
	"strings"
)

// NearMiss is an entry a caller does not match: the selectors of the entry it lacks, and how
// many it has.
type NearMiss struct {
	Entry   Entry
	Missing []Selector
	Has     int
}

// Explain tells why a caller with callerSelectors gets what it gets: the entries it matches
// (as Match) and, of the others, at most maxNear ranked nearest first: most of the entry's
// selectors the caller has, then fewest missing, then by SPIFFE ID. It looks at every entry, so
// it is for explaining (an operator's question, a rate-limited log line), not for serving.
// The returned entries share their slices with the index; do not modify them.
func (x *Index) Explain(callerSelectors []Selector, maxNear int) (matched []Entry, near []NearMiss) {
	caller := Normalize(callerSelectors)
	for _, r := range x.byID {
		var missing []Selector
		for _, s := range r.e.Selectors {
			if _, ok := slices.BinarySearchFunc(caller, s, Selector.Compare); !ok {
				missing = append(missing, s)
			}
		}
		if len(missing) == 0 {
			matched = append(matched, r.e)
			continue
		}
		near = append(near, NearMiss{Entry: r.e, Missing: missing, Has: len(r.e.Selectors) - len(missing)})
	}
	slices.SortFunc(matched, compareForMatch)
	slices.SortFunc(near, func(a, b NearMiss) int {
		if a.Has != b.Has {
			return b.Has - a.Has
		}
		if len(a.Missing) != len(b.Missing) {
			return len(a.Missing) - len(b.Missing)
		}
		if c := strings.Compare(a.Entry.SPIFFEID.String(), b.Entry.SPIFFEID.String()); c != 0 {
			return c
		}
		return strings.Compare(a.Entry.ID, b.Entry.ID)
	})
	if len(near) > maxNear {
		near = near[:maxNear]
	}
	return matched, near
}
