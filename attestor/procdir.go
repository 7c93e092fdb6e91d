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
	fd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, d.err("open", name, err)
	}
	defer unix.Close(fd)
	b := d.buf[:0]
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := unix.Read(fd, b[len(b):cap(b)])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, d.err("read", name, err)
		}
		if n == 0 {
			break
		}
		b = b[:len(b)+n]
	}
	d.buf = b
	return b, nil
}

func (d *procDir) readlink(name string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlinkat(d.fd, name, buf)
		if err != nil {
			return "", d.err("readlink", name, err)
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
