package host

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Root is the host's filesystem seen through a prefix. Production uses "/";
// tests point it at a temporary tree that mimics /sys, /dev, /etc and /run.
// Every path handed to it is absolute as on the real host.
type Root struct {
	Dir string
	// Devices, when set, answers WriteRead in place of the host's
	// character devices: tests play the kernel behind /dev/nvme-fabrics.
	Devices DeviceIO
}

// DeviceIO is a character device that answers a write, as
// /dev/nvme-fabrics answers a connect with the new controller's instance.
type DeviceIO interface {
	WriteRead(p string, data []byte) ([]byte, error)
}

// NewRoot returns a Root at dir ("/" on a real host).
func NewRoot(dir string) Root {
	if dir == "" {
		dir = "/"
	}
	return Root{Dir: dir}
}

// Path maps a host path to the real path.
func (r Root) Path(p string) string {
	if r.Dir == "/" || r.Dir == "" {
		return p
	}
	return filepath.Join(r.Dir, p)
}

// Unroot maps a real path back to the host path.
func (r Root) Unroot(p string) string {
	if r.Dir == "/" || r.Dir == "" {
		return p
	}
	rel, err := filepath.Rel(r.Dir, p)
	if err != nil || strings.HasPrefix(rel, "..") {
		return p
	}
	return "/" + rel
}

// ReadFile reads a file.
func (r Root) ReadFile(p string) ([]byte, error) { return os.ReadFile(r.Path(p)) }

// ReadString reads a sysfs-style attribute and trims the trailing newline.
func (r Root) ReadString(p string) (string, error) {
	b, err := r.ReadFile(p)
	return strings.TrimSpace(string(b)), err
}

// WriteFile writes data, as to a sysfs attribute (no create on a real host).
func (r Root) WriteFile(p string, data []byte, perm fs.FileMode) error {
	return os.WriteFile(r.Path(p), data, perm)
}

// WriteFileAtomic writes through a temporary file and a rename, so readers
// never see half a file and a crash leaves the old or the new content.
func (r Root) WriteFileAtomic(p string, data []byte, perm fs.FileMode) error {
	real := r.Path(p)
	if err := os.MkdirAll(filepath.Dir(real), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(real), "."+filepath.Base(real)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), real)
}

// WriteRead writes data to a character device in one write(2) and reads
// its answer from the same open file: /dev/nvme-fabrics keeps the
// controller it made on the file and prints "instance=N,cntlid=M" to a
// read of that file only (drivers/nvme/host/fabrics.c, nvmf_dev_write
// and nvmf_dev_show). What is written never appears on a command line.
func (r Root) WriteRead(p string, data []byte) ([]byte, error) {
	if r.Devices != nil {
		return r.Devices.WriteRead(p, data)
	}
	f, err := os.OpenFile(r.Path(p), os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return nil, err
	}
	buf := make([]byte, 4096)
	n, err := f.Read(buf)
	if err != nil && n == 0 {
		return nil, err
	}
	return buf[:n], nil
}

// ReadDir lists a directory.
func (r Root) ReadDir(p string) ([]fs.DirEntry, error) { return os.ReadDir(r.Path(p)) }

// Glob returns host paths matching the pattern.
func (r Root) Glob(pattern string) ([]string, error) {
	m, err := filepath.Glob(r.Path(pattern))
	if err != nil {
		return nil, err
	}
	for i := range m {
		m[i] = r.Unroot(m[i])
	}
	return m, nil
}

// Exists reports whether the path exists (following symlinks).
func (r Root) Exists(p string) bool {
	_, err := os.Stat(r.Path(p))
	return err == nil
}

// Readlink reads a symlink.
func (r Root) Readlink(p string) (string, error) { return os.Readlink(r.Path(p)) }

// EvalSymlinks resolves a path to its host-relative target.
func (r Root) EvalSymlinks(p string) (string, error) {
	real, err := filepath.EvalSymlinks(r.Path(p))
	if err != nil {
		return "", err
	}
	return r.Unroot(real), nil
}

// Symlink makes p a symlink to target (taken literally, e.g. "../../x").
func (r Root) Symlink(target, p string) error { return os.Symlink(target, r.Path(p)) }

// MkdirAll creates a directory tree.
func (r Root) MkdirAll(p string, perm fs.FileMode) error { return os.MkdirAll(r.Path(p), perm) }

// Remove removes a file; a missing file is not an error.
func (r Root) Remove(p string) error {
	err := os.Remove(r.Path(p))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// Link makes newname a hard link to oldname; it fails if newname exists,
// which is what makes it a lock primitive (open-iscsi's idbm_lock).
func (r Root) Link(oldname, newname string) error {
	return os.Link(r.Path(oldname), r.Path(newname))
}

// Stat describes a file (following symlinks).
func (r Root) Stat(p string) (fs.FileInfo, error) { return os.Stat(r.Path(p)) }

// ExecDirs are the directories the Runner's PATH searches, in order.
func ExecDirs() []string {
	return []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}
}

// LookPath finds a program the way the Runner's PATH would.
func (r Root) LookPath(name string) (string, error) {
	for _, d := range ExecDirs() {
		p := d + "/" + name
		if st, err := r.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s", ErrNotInstalled, name)
}
