package examples_test

// Every code block of the README and of the docs works as pasted: HCL loads with svidd's own
// config loader, Envoy YAML decodes and validates as the example files do, and each shell
// command of svidd, svidctl, make and `go run` names a subcommand and flags that exist, asked
// of the real programs (`PROG SUBCOMMAND -h`), not of a list kept here. New blocks are checked
// by the same rules; a failure names FILE:LINE of the block's line.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/svidd/svidd/conf"
)

// repoRoot is where README.md is, seen from this package.
const repoRoot = ".."

// docFiles are the Markdown files whose blocks must work.
func docFiles(t *testing.T) []string {
	t.Helper()
	files := []string{"README.md"}
	for _, pat := range []string{"examples/*.md", "examples/*/*.md", "docs/*.md"} {
		m, err := filepath.Glob(filepath.Join(repoRoot, pat))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range m {
			rel, _ := filepath.Rel(repoRoot, f)
			files = append(files, rel)
		}
	}
	return files
}

// block is one fenced code block.
type block struct {
	file string
	lang string // the info string's first word, lower case
	line int    // line of the block's first content line (1-based)
	text string
}

func (b block) at(offset int) string { return fmt.Sprintf("%s:%d", b.file, b.line+offset) }

var fence = regexp.MustCompile("^\\s*(```+|~~~+)\\s*([^\\s`]*)")

// codeBlocks returns the fenced code blocks of a Markdown document.
func codeBlocks(file string, src []byte) ([]block, error) {
	var out []block
	var cur *block
	var marker string
	var body []string
	sc := bufio.NewScanner(bytes.NewReader(src))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		m := fence.FindStringSubmatch(line)
		switch {
		case cur == nil && m != nil:
			cur = &block{file: file, lang: strings.ToLower(m[2]), line: n + 1}
			marker, body = m[1], nil
		case cur != nil && m != nil && m[2] == "" && strings.HasPrefix(strings.TrimSpace(line), marker):
			cur.text = strings.Join(body, "\n") + "\n"
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			body = append(body, line)
		}
	}
	if cur != nil {
		return nil, fmt.Errorf("%s:%d: code block never closed", file, cur.line-1)
	}
	return out, sc.Err()
}

func TestDocSnippets(t *testing.T) {
	c := newSnippetChecker(t)
	n := map[string]int{}
	for _, file := range docFiles(t) {
		src, err := os.ReadFile(filepath.Join(repoRoot, file))
		if err != nil {
			t.Fatal(err)
		}
		blocks, err := codeBlocks(file, src)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range blocks {
			kind, errs := c.check(b)
			n[kind]++
			for _, err := range errs {
				t.Error(err)
			}
		}
	}
	t.Logf("blocks checked: %v", n)
	// The README's own blocks must have been found, or the test checks nothing.
	if n["hcl"] == 0 || n["shell"] == 0 {
		t.Errorf("found %d hcl and %d shell blocks: the block extraction is broken", n["hcl"], n["shell"])
	}
}

// TestSnippetCheckerRejects proves each rule can fail, and that its message names the line.
func TestSnippetCheckerRejects(t *testing.T) {
	c := newSnippetChecker(t)
	tests := []struct {
		name, doc, want string
	}{
		{"HCL one-line block with two arguments", "# t\n\n```hcl\nca { key_type = \"ec-p256\"  ca_ttl = \"24h\" }\n```\n", "T.md:4:"},
		{"HCL unknown key", "```hcl\nagent {\n  trust_domian = \"x\"\n}\n```\n", "T.md:3:"},
		{"unknown svidctl subcommand", "```sh\nsvidctl entry frobnicate -entryID x\n```\n", "T.md:2: svidctl entry frobnicate"},
		{"unknown svidctl flag", "```sh\nmake build\n./bin/svidctl entry create \\\n    -spiffeID spiffe://example.org/x -selectr unix:uid:1\n```\n", "T.md:3: svidctl entry create: no flag -selectr"},
		{"svidctl flag of another subcommand", "```console\n$ svidctl entry delete -spiffeID spiffe://example.org/x\n```\n", "no flag -spiffeID"},
		{"unknown svidd flag", "```shell\nsvidd run -trustdomain example.org &\n```\n", "svidd run: no flag -trustdomain"},
		{"unknown make target", "```sh\nmake instal PREFIX=/usr\n```\n", "no target instal"},
		{"go run of a missing package", "```sh\ngo run ./test/cmd/nosuch -x\n```\n", "./test/cmd/nosuch"},
		{"go run flag the program lacks", "```sh\ngo run ./test/cmd/fakeenvoy -sockett /tmp/agent/api.sock\n```\n", "fakeenvoy: no flag -sockett"},
		{"Envoy YAML with an unknown field", "```yaml\nstatic_resources:\n  clusterz: []\n```\n", "T.md:2: "},
		{"Envoy YAML failing validation", "```yaml\nstatic_resources:\n  clusters:\n  - name: \"\"\n```\n", "validating"},
		{"SDS resource file with an unknown field", "```yaml\nresources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  nmae: svid\n```\n", "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			blocks, err := codeBlocks("T.md", []byte(tt.doc))
			if err != nil || len(blocks) != 1 {
				t.Fatalf("blocks %v, %v", blocks, err)
			}
			_, errs := c.check(blocks[0])
			joined := errors.Join(errs...)
			if joined == nil || !strings.Contains(joined.Error(), tt.want) {
				t.Fatalf("errors %v, want one containing %q", joined, tt.want)
			}
		})
	}
	// And a good block passes.
	good := "```sh\n./bin/svidctl -socketPath /run/svidd/admin.sock entry list -output json   # comment -nosuch\nSVIDD_ADMIN_SOCKET=/x svidctl status | head && make build\n```\n"
	blocks, _ := codeBlocks("T.md", []byte(good))
	if _, errs := c.check(blocks[0]); len(errs) > 0 {
		t.Fatalf("good block refused: %v", errs)
	}
}

// snippetChecker checks blocks, building the programs they run once.
type snippetChecker struct {
	binDir  string
	mu      sync.Mutex
	built   map[string]string     // package dir → binary
	helps   map[string]helpResult // binary + subcommand path → its -h
	targets map[string]bool       // Makefile targets
}

type helpResult struct {
	ok    bool
	out   string
	flags map[string]bool // flag name → takes a value
}

var (
	checkerOnce sync.Once
	checker     *snippetChecker
	checkerErr  error
)

func newSnippetChecker(t *testing.T) *snippetChecker {
	t.Helper()
	checkerOnce.Do(func() {
		dir, err := os.MkdirTemp("", "svidd-snippets-")
		if err != nil {
			checkerErr = err
			return
		}
		checker = &snippetChecker{binDir: dir, built: map[string]string{}, helps: map[string]helpResult{}}
		checker.targets, checkerErr = makeTargets(filepath.Join(repoRoot, "Makefile"))
	})
	if checkerErr != nil {
		t.Fatal(checkerErr)
	}
	return checker
}

func TestMain(m *testing.M) {
	code := m.Run()
	if checker != nil {
		os.RemoveAll(checker.binDir)
	}
	os.Exit(code)
}

var targetRE = regexp.MustCompile(`^([A-Za-z0-9_.-]+)\s*:`)

// makeTargets reads the Makefile's rule names.
func makeTargets(path string) (map[string]bool, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for l := range strings.SplitSeq(string(src), "\n") {
		if m := targetRE.FindStringSubmatch(l); m != nil && !strings.Contains(l, ":=") {
			out[m[1]] = true
		}
	}
	return out, nil
}

// check checks one block by its language; kind is what it was checked as ("" if not at all).
func (c *snippetChecker) check(b block) (kind string, errs []error) {
	switch b.lang {
	case "hcl":
		return "hcl", c.checkHCL(b)
	case "yaml", "yml":
		return "yaml", c.checkYAML(b)
	case "sh", "shell", "bash", "console":
		return "shell", c.checkShell(b)
	}
	return "", nil
}

// checkHCL loads the block as a config file. Blank lines in front make the loader's
// file:line:col diagnostics point at the document's own lines.
func (c *snippetChecker) checkHCL(b block) []error {
	src := strings.Repeat("\n", b.line-1) + b.text
	if _, err := conf.Load(b.file, []byte(src), conf.Overrides{}); err != nil {
		return []error{fmt.Errorf("%s: hcl block does not load with svidd's config loader:\n%v", b.at(0), err)}
	}
	return nil
}

// checkYAML decodes an Envoy bootstrap (or an SDS resource file, `resources:`) as Envoy does
// and validates it; other YAML must at least parse.
func (c *snippetChecker) checkYAML(b block) []error {
	var top map[string]any
	if err := yaml.Unmarshal([]byte(b.text), &top); err != nil {
		return []error{fmt.Errorf("%s: yaml block does not parse: %v", b.at(0), err)}
	}
	if _, ok := top["resources"]; ok {
		js, err := yaml.YAMLToJSON([]byte(b.text))
		if err == nil {
			var r discoveryv3.DiscoveryResponse
			if err = protojson.Unmarshal(js, &r); err == nil {
				err = validateDeep(&r)
			}
		}
		if err != nil {
			return []error{fmt.Errorf("%s: SDS resource yaml block: %v", b.at(0), err)}
		}
		return nil
	}
	for _, k := range []string{"static_resources", "dynamic_resources", "node", "admin", "layered_runtime"} {
		if _, ok := top[k]; ok {
			bs, err := parseBootstrap([]byte(b.text))
			if err == nil {
				for _, cl := range bs.GetStaticResources().GetClusters() {
					if cl.GetName() == sdsCluster {
						err = checkSviddCluster(cl)
					}
				}
			}
			if err != nil {
				return []error{fmt.Errorf("%s: Envoy yaml block: %v", b.at(0), err)}
			}
			return nil
		}
	}
	// Not Envoy's (an alert rule, a Kubernetes object): parsing is all we can say.
	return nil
}

// shellCmd is one simple command of a shell line, with the line it starts on.
type shellCmd struct {
	words  []string
	offset int
}

// checkShell checks every command of the block.
func (c *snippetChecker) checkShell(b block) []error {
	var errs []error
	for _, cmd := range shellCommands(b) {
		if err := c.checkCommand(cmd.words); err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", b.at(cmd.offset), err))
		}
	}
	return errs
}

// shellCommands splits a block into simple commands: continuation lines joined, comments
// dropped, lists and pipelines (&&, ||, ;, |, &) split, redirections dropped. In a console
// block only the lines after a "$ " prompt are commands.
func shellCommands(b block) []shellCmd {
	var out []shellCmd
	lines := strings.Split(strings.TrimSuffix(b.text, "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		start := i
		line := lines[i]
		if b.lang == "console" {
			rest, ok := strings.CutPrefix(strings.TrimLeft(line, " "), "$ ")
			if !ok {
				continue
			}
			line = rest
		}
		for strings.HasSuffix(line, "\\") && i+1 < len(lines) {
			i++
			line = strings.TrimSuffix(line, "\\") + " " + lines[i]
		}
		for _, words := range splitShell(line) {
			if len(words) > 0 {
				out = append(out, shellCmd{words: words, offset: start})
			}
		}
	}
	return out
}

// splitShell tokenizes one logical line as a POSIX shell would, without expansions, into
// simple commands.
func splitShell(line string) [][]string {
	var cmds [][]string
	var words []string
	var cur strings.Builder
	inWord := false
	flush := func() {
		if inWord {
			words = append(words, cur.String())
			cur.Reset()
			inWord = false
		}
	}
	endCmd := func() {
		flush()
		cmds = append(cmds, words)
		words = nil
	}
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case ch == ' ' || ch == '\t':
			flush()
		case ch == '#' && !inWord:
			endCmd()
			return cmds
		case ch == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
			inWord = true
		case ch == '\'':
			end := strings.IndexByte(line[i+1:], '\'')
			if end < 0 {
				end = len(line) - i - 1
			}
			cur.WriteString(line[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case ch == '"':
			i++
			for ; i < len(line) && line[i] != '"'; i++ {
				if line[i] == '\\' && i+1 < len(line) {
					i++
				}
				cur.WriteByte(line[i])
			}
			inWord = true
		case ch == '&' || ch == '|' || ch == ';':
			if i+1 < len(line) && (line[i+1] == ch) {
				i++
			}
			endCmd()
		case ch == '>' || ch == '<':
			// A redirection: drop the operator, a fd number before it and its target.
			if inWord && isDigits(cur.String()) {
				cur.Reset()
				inWord = false
			}
			flush()
			for i+1 < len(line) && (line[i+1] == '>' || line[i+1] == '&') {
				i++
			}
			for i+1 < len(line) && line[i+1] == ' ' {
				i++
			}
			for i+1 < len(line) && line[i+1] != ' ' && line[i+1] != ';' && line[i+1] != '&' && line[i+1] != '|' {
				i++
			}
		default:
			cur.WriteByte(ch)
			inWord = true
		}
	}
	endCmd()
	return cmds
}

func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

var assignment = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)

// checkCommand checks one simple command's program, subcommand and flags.
func (c *snippetChecker) checkCommand(words []string) error {
	// Variable assignments and wrappers in front of the program.
	for len(words) > 0 && (assignment.MatchString(words[0]) || slices.Contains([]string{"sudo", "nohup", "env", "exec", "time"}, words[0])) {
		words = words[1:]
	}
	if len(words) == 0 {
		return nil
	}
	prog, args := words[0], words[1:]
	switch filepath.Base(prog) {
	case "svidctl":
		return c.checkCLI("svidctl", "./cmd/svidctl", args)
	case "svidd":
		return c.checkCLI("svidd", "./cmd/svidd", args)
	case "make":
		for _, a := range args {
			if strings.HasPrefix(a, "-") || assignment.MatchString(a) {
				continue
			}
			if !c.targets[a] {
				return fmt.Errorf("make %s: the Makefile has no target %s", a, a)
			}
		}
	case "go":
		if len(args) >= 2 && (args[0] == "run" || args[0] == "test" || args[0] == "build") {
			i := slices.IndexFunc(args[1:], func(a string) bool { return strings.HasPrefix(a, "./") })
			if i < 0 {
				return nil // a placeholder such as <package>, or ./... forms handled by go itself
			}
			pkg := strings.TrimSuffix(args[1+i], "/...")
			if _, err := os.Stat(filepath.Join(repoRoot, pkg)); err != nil {
				return fmt.Errorf("go %s %s: no such package in the repository", args[0], pkg)
			}
			if args[0] == "run" && i == 0 {
				return c.checkCLI(filepath.Base(pkg), pkg, args[2:])
			}
		}
	}
	return nil
}

// checkCLI walks args as the program's flag parsing does: words select subcommands (each
// must have a `-h`), flags must be listed in the current subcommand's -h output, and a flag
// that takes a value consumes the next word.
func (c *snippetChecker) checkCLI(name, pkg string, args []string) error {
	bin, err := c.build(pkg)
	if err != nil {
		return err
	}
	var path []string
	h := c.help(bin, nil)
	if !h.ok {
		return fmt.Errorf("%s -h fails:\n%s", name, h.out)
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		cmd := strings.Join(append([]string{name}, path...), " ")
		if a == "--" {
			return nil
		}
		if strings.HasPrefix(a, "-") && a != "-" {
			fl, _, inline := strings.Cut(strings.TrimLeft(a, "-"), "=")
			takes, ok := h.flags[fl]
			if fl == "h" || fl == "help" {
				ok = true // flag's own, listed by nobody
			}
			if !ok {
				return fmt.Errorf("%s: no flag -%s (its flags: %s)", cmd, fl, flagNames(h.flags))
			}
			if takes && !inline {
				i++
			}
			continue
		}
		path = append(path, a)
		h = c.help(bin, path)
		if !h.ok {
			return fmt.Errorf("%s %s: no such command (%s %s -h says: %s)", name, strings.Join(path, " "), name, strings.Join(path, " "), firstLines(h.out))
		}
	}
	return nil
}

func flagNames(m map[string]bool) string {
	var names []string
	for n := range m {
		names = append(names, "-"+n)
	}
	slices.Sort(names)
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, " ")
}

func firstLines(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 3 {
		lines = lines[len(lines)-3:]
	}
	return strings.Join(lines, " / ")
}

// flagLine is how flag.PrintDefaults lists a flag: "  -name" and, when it takes a value, its
// type or value name.
var flagLine = regexp.MustCompile(`^  -([A-Za-z0-9][A-Za-z0-9_.-]*)(?:\s+(\S+))?\s*$`)

// help runs `bin path... -h` once and reads the flags it lists. A subcommand exists when -h
// succeeds; a program whose -h exits non-zero but lists flags (flag.ContinueOnError returning
// 2) counts too when it has no subcommands.
func (c *snippetChecker) help(bin string, path []string) helpResult {
	key := bin + "\x00" + strings.Join(path, "\x00")
	c.mu.Lock()
	defer c.mu.Unlock()
	if h, ok := c.helps[key]; ok {
		return h
	}
	cmd := exec.Command(bin, append(slices.Clone(path), "-h")...)
	cmd.Env = append(os.Environ(), "SVIDD_ADMIN_SOCKET=", "SPIFFE_ENDPOINT_SOCKET=")
	out, err := cmd.CombinedOutput()
	h := helpResult{ok: err == nil, out: string(out), flags: map[string]bool{}}
	for l := range strings.SplitSeq(string(out), "\n") {
		if m := flagLine.FindStringSubmatch(l); m != nil {
			h.flags[m[1]] = m[2] != ""
		}
	}
	if !h.ok && len(path) == 0 && len(h.flags) > 0 && strings.Contains(h.out, "Usage") {
		h.ok = true
	}
	c.helps[key] = h
	return h
}

// build compiles a package of the repository once.
func (c *snippetChecker) build(pkg string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if bin, ok := c.built[pkg]; ok {
		return bin, nil
	}
	bin := filepath.Join(c.binDir, strings.ReplaceAll(strings.Trim(pkg, "./"), "/", "_"))
	cmd := exec.Command("go", "build", "-tags", "grpcnotrace", "-o", bin, pkg)
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building %s: %v\n%s", pkg, err, out)
	}
	c.built[pkg] = bin
	return bin, nil
}
