package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// ReadRawDisk calls fn with the raw bytes of instance id's disk image as
// stored on the host, so a caller (the conformance suite) can check that
// what the instance wrote is not there in clear. The volume's filesystem is
// synced first, and only the image's data extents are read: holes of the
// sparse file are zeros and are skipped.
func (p *Provider) ReadRawDisk(ctx context.Context, id string, fn func(r io.Reader) error) error {
	if _, err := p.st.instance(id); err != nil {
		return err
	}
	if d, err := os.Open(p.volDir(id)); err == nil {
		unix.Syncfs(int(d.Fd()))
		d.Close()
	}
	f, err := os.Open(p.diskImage(id))
	if err != nil {
		return fmt.Errorf("local: %w", err)
	}
	defer f.Close()
	return fn(&extentReader{ctx: ctx, f: f})
}

// extentReader reads the data extents of a sparse file, one after another.
type extentReader struct {
	ctx      context.Context
	f        *os.File
	off, end int64 // current position and the end of the current extent
}

func (r *extentReader) Read(b []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	if r.off >= r.end {
		data, err := unix.Seek(int(r.f.Fd()), r.off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return 0, io.EOF // no data after off
		}
		if err != nil {
			return 0, fmt.Errorf("local: seek data: %w", err)
		}
		hole, err := unix.Seek(int(r.f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return 0, fmt.Errorf("local: seek hole: %w", err)
		}
		r.off, r.end = data, hole
	}
	if n := r.end - r.off; int64(len(b)) > n {
		b = b[:n]
	}
	n, err := r.f.ReadAt(b, r.off)
	r.off += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}
