package attestor

import (
	"errors"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// procDir is an open /proc/PID directory. Every read goes through the directory fd, which
// is bound to the process it was opened for: once that process is reaped, lookups under it
// fail (ENOENT or ESRCH) even if a newcomer has taken the pid — they never return the
// newcomer's files. It also saves a path walk per read.
type procDir struct {
	fd   int
	path string
	buf  []byte // reused by read; one procDir serves one attestation
}

func openProcDir(path string) (*procDir, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return &procDir{fd: fd, path: path, buf: make([]byte, 0, 4096)}, nil
}

func (d *procDir) close() { unix.Close(d.fd) }

// read returns the content of name; the slice is valid until the next read.
func (d *procDir) read(name string) ([]byte, error) {
	b, err := readAt(d.fd, name, d.buf[:0])
	if err != nil {
		return nil, d.err("read", name, err)
	}
	d.buf = b
	return b, nil
}

// readAt reads the file name under dirfd into b[len(b):] (growing it as needed) and returns
// the result.
//
// The files we read (stat, status, cgroup, fdinfo) are generated whole by the kernel on the
// first read (seq_file single_open), so a read that leaves room in the buffer has returned
// everything: we stop there instead of paying for a second read that returns 0. Only a read
// that fills the buffer, or does not end a line (each of those files ends with one; a value
// cut short must never be taken for a whole one), is followed by another.
func readAt(dirfd int, name string, b []byte) ([]byte, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		room := cap(b) - len(b)
		n, err := unix.Read(fd, b[len(b):cap(b)])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		b = b[:len(b)+n]
		if n == 0 || n < room && b[len(b)-1] == '\n' {
			return b, nil
		}
	}
}

func (d *procDir) readlink(name string) (string, error) {
	s, err := readlinkat(d.fd, name)
	if err != nil {
		return "", d.err("readlink", name, err)
	}
	return s, nil
}

func readlinkat(dirfd int, name string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, 2*len(buf))
	}
}

func (d *procDir) stat(name string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(d.fd, name, &st, 0); err != nil {
		return nsID{}, d.err("stat", name, err)
	}
	return nsID{dev: st.Dev, ino: st.Ino}, nil
}

func (d *procDir) open(name string) (*os.File, error) {
	fd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, d.err("open", name, err)
	}
	return os.NewFile(uintptr(fd), d.path+"/"+name), nil
}

func (d *procDir) err(op, name string, err error) error {
	return &fs.PathError{Op: op, Path: d.path + "/" + name, Err: err}
}
