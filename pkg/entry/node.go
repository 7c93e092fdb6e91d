package entry

import (
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Node selectors scope entries to hosts. svidd adds node:name:NAME and node:group:G (one per
// group) to the selectors of every caller on a host, from its own configuration (agent
// { node_name, node_groups }), never from anything the caller controls: the attestor derives
// no selector of type node. An entry with a node selector matches only on the hosts that
// have it; an entry without one matches on every host.
const (
	TypeNode = "node"
	// KindNodeName and KindNodeGroup are selectorKind's results for the two node selectors.
	KindNodeName  = TypeNode + ":name"
	KindNodeGroup = TypeNode + ":group"
)

// MaxNodeNameLen bounds a node name and a node group name (a DNS name's length: node names
// default to the hostname).
const MaxNodeNameLen = 253

// ValidateNodeName checks a host's node name as written in agent.node_name: what
// ValidateNodeGroup checks, and no "/" (the name is one segment of the host's keys in the
// fleet registry, hosts/NAME/). Errors wrap ErrInvalid.
func ValidateNodeName(name string) error {
	if err := validateNodeWord("node name", name); err != nil {
		return err
	}
	if strings.Contains(name, "/") {
		return fmt.Errorf("%w: node name %q contains \"/\"; a node name is one word (it names the host's keys in the registry)", ErrInvalid, name)
	}
	return nil
}

// ValidateNodeGroup checks a node group name: 1 to MaxNodeNameLen bytes of UTF-8 without
// whitespace or control characters. Errors wrap ErrInvalid.
func ValidateNodeGroup(group string) error { return validateNodeWord("node group", group) }

func validateNodeWord(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: %s is empty", ErrInvalid, what)
	case len(s) > MaxNodeNameLen:
		return fmt.Errorf("%w: %s %.20q... is longer than %d bytes", ErrInvalid, what, s, MaxNodeNameLen)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: %s %q is not valid UTF-8", ErrInvalid, what, s)
	}
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("%w: %s %q contains whitespace or a control character (%U)", ErrInvalid, what, s, r)
		}
	}
	return nil
}

// NodeSelectors returns the selectors svidd adds to every caller on the host named name
// that belongs to groups, normalized. name and groups are assumed valid (the config loader
// checks them).
func NodeSelectors(name string, groups []string) []Selector {
	out := make([]Selector, 0, 1+len(groups))
	out = append(out, Selector{Type: TypeNode, Value: "name:" + name})
	for _, g := range groups {
		out = append(out, Selector{Type: TypeNode, Value: "group:" + g})
	}
	return Normalize(out)
}

// WithNode returns a caller's selectors (normalized) with the host's node selectors
// (NodeSelectors) added, as a new normalized slice; sel is not modified.
func WithNode(sel, node []Selector) []Selector {
	if len(node) == 0 {
		return sel
	}
	out := make([]Selector, 0, len(sel)+len(node))
	out = append(append(out, sel...), node...)
	return Normalize(out)
}

// IsNodeSelector reports whether s is of type node.
func IsNodeSelector(s Selector) bool { return s.Type == TypeNode }

// CanMatchNode reports whether e can match any caller on the host named name that belongs to
// groups: every node:name selector of e names this host (so an entry with two different
// node:name selectors matches nowhere) and every node:group selector one of its groups. An
// entry without node selectors can match on every host. It is what a host mirrors of a
// fleet registry.
func CanMatchNode(e Entry, name string, groups []string) bool {
	for _, s := range e.Selectors {
		switch selectorKind(s) {
		case KindNodeName:
			if s.Value[len("name:"):] != name {
				return false
			}
		case KindNodeGroup:
			if !slices.Contains(groups, s.Value[len("group:"):]) {
				return false
			}
		}
	}
	return true
}

// validateNodeSelector checks a selector of type node: node:name:NAME or node:group:GROUP,
// the value as ValidateNodeName or ValidateNodeGroup accept it.
func validateNodeSelector(s Selector) error {
	kind, value, ok := strings.Cut(s.Value, ":")
	var err error
	switch {
	case ok && kind == "name":
		err = ValidateNodeName(value)
	case ok && kind == "group":
		err = ValidateNodeGroup(value)
	default:
		return fmt.Errorf("%w: selector %q: node selectors are node:name:NAME or node:group:GROUP", ErrInvalid, s.String())
	}
	if err != nil {
		return fmt.Errorf("%w: selector %q: %s", ErrInvalid, s.String(), strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": "))
	}
	return nil
}
