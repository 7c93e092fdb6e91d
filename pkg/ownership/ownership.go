// Package ownership checks that the directories and files svidd trusts are svidd's: owned by
// its own uid (or root), writable by nobody else, and out of reach of other users through their
// parents. A local user who creates /tmp/agent before svidd starts could otherwise move the
// live admin.sock aside and listen in its place (root's svidctl would then talk to them), and
// one who owns the data dir could swap svidd.db or ca.json between two starts.
//
// The rules, for a path svidd trusts:
//   - the directory itself (or the file) is owned by svidd's effective uid or by root, and has
//     no group or other write bit;
//   - every parent is owned by svidd's uid or root, and is either not writable by group and
//     others or has the sticky bit (as /tmp has: there only an entry's owner may rename or
//     remove it, and the entry is svidd's);
//   - a symbolic link on the way is owned by svidd's uid or root, and the path it leads to
//     passes the same checks.
//
// Root is trusted: it is outside svidd's threat model (docs/SECURITY.md).
package ownership

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"syscall"
)

// Dir makes dir svidd's own directory. If dir does not exist it is created (with any missing
// parents) with mode, applied with chmod so the umask does not narrow it. An existing
// directory keeps its mode. Either way dir and its parents must then pass the package's rules;
// otherwise the error names the directory at fault, its owner or mode, and what to do. what
// names the directory in errors ("socket directory", "data dir").
func Dir(what, dir string, mode os.FileMode) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	_, err = os.Lstat(abs)
	created := false
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// A directory another user creates between this Lstat and MkdirAll is accepted by
		// MkdirAll: the checks below, not the creation, decide.
		if err := os.MkdirAll(abs, mode); err != nil {
			return fmt.Errorf("creating %s %s: %w", what, dir, err)
		}
		created = true
	case err != nil:
		return fmt.Errorf("checking %s %s: %w", what, dir, err)
	}
	if err := CheckDir(what, abs); err != nil {
		return err
	}
	if created {
		if err := os.Chmod(abs, mode); err != nil {
			return fmt.Errorf("setting mode of %s %s: %w", what, dir, err)
		}
	}
	return nil
}

// CheckDir checks that an existing dir and its parents pass the package's rules.
func CheckDir(what, dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	if err := checkPath(what, abs, abs); err != nil {
		return err
	}
	// The chain as written may pass through trusted symbolic links; the directories they lead
	// to must pass too.
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return fmt.Errorf("checking %s %s: %w", what, dir, err)
	}
	if real != abs {
		return checkPath(what, abs+" (which leads to "+real+")", real)
	}
	return nil
}

// File checks the file at path, if there is one, before svidd opens it: a regular file (not a
// symbolic link) owned by svidd's uid, with no group or other write bit. A missing file is not
// an error. The directory holding it is checked separately (Dir).
func File(what, path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking %s %s: %w", what, path, err)
	}
	return CheckFileInfo(what, path, fi)
}

// CheckFileInfo is File for a file already opened or stat'ed (fi from Lstat or File.Stat).
func CheckFileInfo(what, path string, fi os.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s %s is not a regular file (%s); refusing to use it", what, path, fi.Mode().Type())
	}
	if uid, ok := ownerOf(fi); ok && int(uid) != os.Geteuid() {
		return fmt.Errorf("%s %s is owned by %s, not by svidd's user (%s): its owner could have replaced it; refusing to use it (check it, then chown it or remove it)",
			what, path, describeUID(uid), describeUID(uint32(os.Geteuid())))
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%s %s is writable by group or others (mode %04o); refusing to use it (check it, then chmod go-w it)", what, path, perm)
	}
	return nil
}

// checkPath applies the rules to the directory p (absolute, clean) and each of its parents;
// shown is how errors name p.
func checkPath(what, shown, p string) error {
	leaf := p
	for {
		fi, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("checking %s %s: %w", what, shown, err)
		}
		uid, _ := ownerOf(fi)
		trusted := int(uid) == os.Geteuid() || uid == 0
		mode := fi.Mode()
		switch {
		case mode.Type() == fs.ModeSymlink:
			if !trusted {
				return fmt.Errorf("%s %s: %s is a symbolic link owned by %s, not by %s; refusing to follow it",
					what, shown, p, describeUID(uid), trustedOwners())
			}
		case p == leaf:
			if !mode.IsDir() {
				return fmt.Errorf("%s %s is not a directory", what, shown)
			}
			if !trusted {
				return fmt.Errorf("%s %s is owned by %s, not by %s: that user could replace what svidd keeps there; remove it (or chown it) and start svidd again",
					what, shown, describeUID(uid), trustedOwners())
			}
			if mode.Perm()&0o022 != 0 {
				return fmt.Errorf("%s %s is writable by group or others (mode %04o): they could replace what svidd keeps there; chmod go-w it",
					what, shown, mode.Perm())
			}
		default:
			if !trusted {
				return fmt.Errorf("%s %s: its parent %s is owned by %s, not by %s: that user could rename %s and put their own in its place",
					what, shown, p, describeUID(uid), trustedOwners(), filepath.Base(leaf))
			}
			if mode.Perm()&0o022 != 0 && mode&fs.ModeSticky == 0 {
				return fmt.Errorf("%s %s: its parent %s is writable by group or others without the sticky bit (mode %04o): they could rename %s and put their own in its place",
					what, shown, p, mode.Perm(), filepath.Base(leaf))
			}
		}
		parent := filepath.Dir(p)
		if parent == p {
			return nil
		}
		p = parent
	}
}

// trustedOwners says whom svidd trusts, for errors.
func trustedOwners() string {
	if os.Geteuid() == 0 {
		return "root (svidd's user)"
	}
	return fmt.Sprintf("svidd's user (%s) or root", describeUID(uint32(os.Geteuid())))
}

func ownerOf(fi os.FileInfo) (uint32, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Uid, true
}

// describeUID is "uid 1001 (alice)", or "uid 1001" when the user database does not know it.
func describeUID(uid uint32) string {
	s := fmt.Sprintf("uid %d", uid)
	if u, err := user.LookupId(fmt.Sprint(uid)); err == nil && u.Username != "" {
		s += " (" + u.Username + ")"
	}
	return s
}
