package attestor

import (
	"fmt"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/svidd/svidd/pkg/peercred"
)

// PeerOf presents the live process pid as a connection from it would: its effective uid and
// gid (what SO_PEERCRED reports) and a pidfd, so that Attest derives exactly the selectors a
// real connection of that process would get. For explaining, not for serving: the caller
// never proved it is that process. Close the Peer.
func (a *Attestor) PeerOf(pid int) (*peercred.Peer, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("pid %d is not a process id", pid)
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", pid, err)
	}
	dir, err := openProcDir(filepath.Join(a.proc, strconv.Itoa(pid)))
	if err != nil {
		unix.Close(pidfd)
		return nil, a.readErr(pid, "opening its /proc directory", err)
	}
	defer dir.close()
	st, err := readStatus(dir)
	if err != nil {
		unix.Close(pidfd)
		return nil, a.readErr(pid, "reading its status", err)
	}
	return peercred.NewPeer(int32(pid), st.euid, st.egid, pidfd), nil
}

// UserName and GroupName resolve ids as attestation does (unix:user, unix:group).
func (a *Attestor) UserName(uid uint32) (string, bool)  { return a.names.user(uid) }
func (a *Attestor) GroupName(gid uint32) (string, bool) { return a.names.group(gid) }
