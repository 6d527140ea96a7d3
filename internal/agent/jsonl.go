package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/encoding/protojson"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// AppendEventJSON appends the JSON form of ev to dst: the form of the
// JSON-lines output and of `vigil events -o json`, one compact line with
// the proto field names (protojson, then compacted: protojson varies its
// whitespace on purpose).
func AppendEventJSON(dst []byte, ev *vigilv1.Event) ([]byte, error) {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(ev)
	if err != nil {
		return dst, err
	}
	out := bytes.NewBuffer(dst)
	if err := json.Compact(out, b); err != nil {
		return dst, err
	}
	return out.Bytes(), nil
}

// jsonlWriter appends events to a file, one JSON object a line. The file
// is opened in append mode, so it may be rotated by copy-and-truncate.
type jsonlWriter struct {
	path string
	f    *os.File
	w    *bufio.Writer
}

func openJSONL(path string) (*jsonlWriter, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("jsonl output %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("jsonl output %s: %w", path, err)
	}
	return &jsonlWriter{path: path, f: f, w: bufio.NewWriterSize(f, 64<<10)}, nil
}

// write appends evs and flushes them to the file. An event that cannot
// be encoded is left out; the others are written.
func (j *jsonlWriter) write(evs []*vigilv1.Event) error {
	var (
		buf  []byte
		errs []error
	)
	for _, ev := range evs {
		var err error
		buf, err = AppendEventJSON(buf[:0], ev)
		if err != nil {
			errs = append(errs, fmt.Errorf("jsonl output %s: encode event seq %d: %w", j.path, ev.GetSeq(), err))
			continue
		}
		buf = append(buf, '\n')
		if _, err := j.w.Write(buf); err != nil {
			break // the flush below reports it
		}
	}
	if err := j.w.Flush(); err != nil {
		// Drop what could not be written rather than retrying it forever.
		j.w.Reset(j.f)
		errs = append(errs, fmt.Errorf("jsonl output %s: %w", j.path, err))
	}
	return errors.Join(errs...)
}

func (j *jsonlWriter) close() error {
	err := j.w.Flush()
	if cerr := j.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("jsonl output %s: %w", j.path, err)
	}
	return nil
}
