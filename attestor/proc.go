package attestor

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// readStartTime returns field 22 of /proc/PID/stat: the process's start time in clock ticks since
// boot. Two processes that held the same pid differ here unless both started in the same
// tick — which would need the pid space to wrap within 10 ms.
func readStartTime(d *procDir) (uint64, error) {
	b, err := d.read("stat")
	if err != nil {
		return 0, err
	}
	return parseStartTime(b)
}

// parseStartTime parses /proc/PID/stat. The command name (field 2) is in parentheses and may
// itself contain spaces and parentheses, so fields are counted from the last ')'.
func parseStartTime(b []byte) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed stat: no command name")
	}
	// After ") " come fields 3, 4, …; starttime is field 22.
	fields := strings.Fields(string(b[i+1:]))
	const idx = 22 - 3
	if len(fields) <= idx {
		return 0, fmt.Errorf("malformed stat: %d fields after the command name", len(fields))
	}
	n, err := strconv.ParseUint(fields[idx], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("malformed stat: start time: %w", err)
	}
	return n, nil
}

type status struct {
	euid, egid uint32
	groups     []uint32
}

func readStatus(d *procDir) (status, error) {
	b, err := d.read("status")
	if err != nil {
		return status{}, err
	}
	return parseStatus(b)
}

// parseStatus reads the effective uid and gid (the ones SO_PEERCRED reports: the second of
// "Uid: real effective saved fs") and the supplementary groups from /proc/PID/status.
func parseStatus(b []byte) (status, error) {
	var st status
	uid, ok := field(b, "Uid:")
	if !ok {
		return st, errors.New("malformed status: no Uid line")
	}
	gid, ok := field(b, "Gid:")
	if !ok {
		return st, errors.New("malformed status: no Gid line")
	}
	var err error
	if st.euid, err = secondID(uid); err != nil {
		return st, fmt.Errorf("malformed status: Uid: %w", err)
	}
	if st.egid, err = secondID(gid); err != nil {
		return st, fmt.Errorf("malformed status: Gid: %w", err)
	}
	groups, _ := field(b, "Groups:")
	for g := range strings.FieldsSeq(groups) {
		n, err := strconv.ParseUint(g, 10, 32)
		if err != nil {
			return st, fmt.Errorf("malformed status: Groups: %w", err)
		}
		st.groups = append(st.groups, uint32(n))
	}
	return st, nil
}

func secondID(s string) (uint32, error) {
	f := strings.Fields(s)
	if len(f) < 2 {
		return 0, fmt.Errorf("%q has fewer than 2 ids", s)
	}
	n, err := strconv.ParseUint(f[1], 10, 32)
	return uint32(n), err
}

// field returns the trimmed rest of the first line starting with key.
func field(b []byte, key string) (string, bool) {
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if v, ok := bytes.CutPrefix(line, []byte(key)); ok {
			return strings.TrimSpace(string(v)), true
		}
	}
	return "", false
}

// readCgroup returns the caller's cgroup v2 path (the "0::PATH" line), or "" on a host with
// only cgroup v1. The path is relative to svidd's cgroup namespace root.
func readCgroup(d *procDir) (string, error) {
	b, err := d.read("cgroup")
	if err != nil {
		return "", err
	}
	v, _ := field(b, "0::")
	return v, nil
}

// systemdUnit derives the systemd unit from a cgroup v2 path. The rule: walk the path from
// the root past the slices (elements ending in ".slice"); the next element, if it ends in
// ".service" or ".scope", is the unit. "/init.scope" is PID 1's.
//
//	/system.slice/envoy.service                              → envoy.service
//	/system.slice/envoy.service/worker                       → envoy.service
//	/user.slice/user-1000.slice/session-2.scope              → session-2.scope
//	/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service → user@1000.service
//	/machine.slice/docker-abc.scope/system.slice/envoy.service → docker-abc.scope
//	/ or /custom                                             → none
//
// We deliberately stop at the first unit rather than taking the innermost: below a unit
// the cgroup tree may be delegated (user@UID.service to that user, a container scope to its
// runtime), and whoever owns a delegated subtree can name cgroups anything — user 1000 could
// mkdir ".../user@1000.service/envoy.service" and pose as the system's envoy.service. Only
// the levels down to the first unit are created by the system manager. Use unix:cgroup to
// select deeper.
func systemdUnit(cgroup string) string {
	if cgroup == "/init.scope" {
		return "init.scope"
	}
	rest, ok := strings.CutPrefix(cgroup, "/")
	if !ok {
		return ""
	}
	sawSlice := false
	for elem := range strings.SplitSeq(rest, "/") {
		switch {
		case strings.HasSuffix(elem, ".slice") && len(elem) > len(".slice"):
			sawSlice = true
		case sawSlice && (strings.HasSuffix(elem, ".service") && len(elem) > len(".service") ||
			strings.HasSuffix(elem, ".scope") && len(elem) > len(".scope")):
			return elem
		default:
			return ""
		}
	}
	return ""
}
