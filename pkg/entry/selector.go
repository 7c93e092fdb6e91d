package entry

import (
	"fmt"
	"strconv"
	"strings"
)

// Selector types and the kinds of value each takes. The attestor derives exactly these for a
// caller; an entry can only use these, so a typo in a selector is an error, not an entry that
// silently never matches.
const (
	TypeUnix    = "unix"
	TypeSystemd = "systemd"
	// TypeNode (node.go) is svidd's own, not the attestor's: the host's name and groups.
)

// MaxSelectorLen bounds one selector so a request cannot make the agent hold arbitrarily
// large strings.
const MaxSelectorLen = 1024

type valueKind int

const (
	kindUint valueKind = iota
	kindName
	kindAbsPath
	kindSHA256
	kindUnit
	kindNamespace
)

var selectorKinds = map[string]valueKind{
	"unix:uid":               kindUint,
	"unix:user":              kindName,
	"unix:gid":               kindUint,
	"unix:group":             kindName,
	"unix:supplementary_gid": kindUint,
	"unix:path":              kindAbsPath,
	"unix:sha256":            kindSHA256,
	"unix:cgroup":            kindAbsPath,
	"unix:namespace":         kindNamespace,
	"systemd:unit":           kindUnit,
}

// ParseSelector parses "TYPE:KIND:VALUE", e.g. "unix:uid:1000" or "unix:path:/usr/bin/envoy"
// (the value may contain colons). The result is validated.
func ParseSelector(s string) (Selector, error) {
	typ, value, ok := strings.Cut(s, ":")
	if !ok || typ == "" || value == "" {
		return Selector{}, fmt.Errorf("%w: selector %q is not of the form type:value (e.g. unix:uid:1000)", ErrInvalid, s)
	}
	sel := Selector{Type: typ, Value: value}
	if err := ValidateSelector(sel); err != nil {
		return Selector{}, err
	}
	return sel, nil
}

// ParseSelectors parses each string with ParseSelector and returns the normalized set.
func ParseSelectors(ss []string) ([]Selector, error) {
	out := make([]Selector, 0, len(ss))
	for _, s := range ss {
		sel, err := ParseSelector(s)
		if err != nil {
			return nil, err
		}
		out = append(out, sel)
	}
	return Normalize(out), nil
}

// ValidateSelector checks that the selector is one the attestors produce, or a node selector
// (node.go), and that its value has the right form for its kind.
func ValidateSelector(s Selector) error {
	if len(s.Type)+1+len(s.Value) > MaxSelectorLen {
		return fmt.Errorf("%w: selector is longer than %d bytes", ErrInvalid, MaxSelectorLen)
	}
	if s.Type == TypeNode {
		return validateNodeSelector(s)
	}
	kind, value, ok := strings.Cut(s.Value, ":")
	if !ok {
		return fmt.Errorf("%w: selector %q has no kind (want e.g. unix:uid:1000)", ErrInvalid, s.String())
	}
	k, known := selectorKinds[s.Type+":"+kind]
	if !known {
		return fmt.Errorf("%w: unknown selector %q (known: %s)", ErrInvalid, s.Type+":"+kind, knownSelectors())
	}
	if value == "" {
		return fmt.Errorf("%w: selector %q has an empty value", ErrInvalid, s.String())
	}
	if strings.ContainsAny(value, "\x00\n") {
		return fmt.Errorf("%w: selector %q contains a NUL or newline", ErrInvalid, s.String())
	}
	switch k {
	case kindUint:
		n, err := strconv.ParseUint(value, 10, 32)
		if err != nil {
			return fmt.Errorf("%w: selector %q: %q is not a numeric id", ErrInvalid, s.String(), value)
		}
		// The attestor writes ids in canonical decimal; "01000" would never match.
		if strconv.FormatUint(n, 10) != value {
			return fmt.Errorf("%w: selector %q: write the id without leading zeros (%d)", ErrInvalid, s.String(), n)
		}
	case kindName:
		if strings.ContainsAny(value, ": /") {
			return fmt.Errorf("%w: selector %q: %q is not a valid user or group name", ErrInvalid, s.String(), value)
		}
	case kindAbsPath:
		if !strings.HasPrefix(value, "/") {
			return fmt.Errorf("%w: selector %q: path must be absolute", ErrInvalid, s.String())
		}
	case kindSHA256:
		if len(value) != 64 || strings.Trim(value, "0123456789abcdef") != "" {
			return fmt.Errorf("%w: selector %q: want 64 lowercase hex digits", ErrInvalid, s.String())
		}
	case kindUnit:
		if strings.ContainsAny(value, "/ ") || !strings.Contains(value, ".") {
			return fmt.Errorf("%w: selector %q: want a unit name such as envoy.service", ErrInvalid, s.String())
		}
	case kindNamespace:
		if value != "host" && value != "container" {
			return fmt.Errorf("%w: selector %q: want host or container", ErrInvalid, s.String())
		}
	}
	return nil
}

func knownSelectors() string {
	return "unix:uid, unix:user, unix:gid, unix:group, unix:supplementary_gid, unix:path, unix:sha256, unix:cgroup, unix:namespace, systemd:unit, node:name, node:group"
}
