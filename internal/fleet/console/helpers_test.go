package console_test

import (
	"os"
	"testing"
)

func filepathStat(p string) (os.FileInfo, error) { return os.Stat(p) }

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}
