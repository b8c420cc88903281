package image

import (
	"path/filepath"
	"strings"
)

func filepathGlob(p string) ([]string, error) { return filepath.Glob(p) }

func containsLine(s, prefix string) bool {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}
