// Package syncbuf holds Buffer, an io.Writer that a child process's output
// can go to while another goroutine reads what it has written so far
// (exec.Cmd copies a non-file Stdout in a goroutine of its own).
package syncbuf

import (
	"strings"
	"sync"
)

// Buffer is safe for one writer and any number of readers at once. The
// zero value is an empty buffer.
type Buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
