package conf

import (
	"fmt"
	"io"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// DiagError is the error Load, LoadFile and Validate return for a bad configuration. It
// holds every problem found, not only the first.
type DiagError struct {
	Diags hcl.Diagnostics
	// Files are the parsed sources by name, for rendering snippets; empty when no file was
	// read (e.g. only a flag was wrong).
	Files map[string]*hcl.File
}

// Error renders one line per diagnostic: "file:line:col: summary; detail", or
// "summary; detail" when the problem has no position (a flag, a programmatic Config).
func (e *DiagError) Error() string {
	var b strings.Builder
	for i, d := range e.Diags {
		if i > 0 {
			b.WriteByte('\n')
		}
		if d.Subject != nil {
			fmt.Fprintf(&b, "%s:%d:%d: ", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column)
		}
		b.WriteString(d.Summary)
		if d.Detail != "" {
			b.WriteString("; ")
			b.WriteString(d.Detail)
		}
	}
	return b.String()
}

// Write renders the diagnostics for a terminal, each with the offending source lines
// underlined. color adds ANSI escapes.
func (e *DiagError) Write(w io.Writer, color bool) error {
	files := e.Files
	if files == nil {
		files = map[string]*hcl.File{}
	}
	return hcl.NewDiagnosticTextWriter(w, files, 0, color).WriteDiagnostics(e.Diags)
}
