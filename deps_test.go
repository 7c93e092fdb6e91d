package svidd_test

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"path"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/svidd/svidd"

// allowed states, for every package of the module (path below the module root, "" for the
// root), which packages of ours it may import: use in its own files, test in addition in its
// _test.go files. The lists are today's imports and nothing more; a new package fails
// TestDependencies until it is listed here, and a new import of ours until it is added, so a
// change of the tree's shape is a visible line in a review. What the lists must keep true
// whatever is added to them is in TestLayers.
var allowed = map[string]struct{ use, test []string }{
	"": {},

	// The daemon and the CLI sit on top.
	"cmd/svidd":   {use: []string{"agent", "conf"}},
	"cmd/svidctl": {use: []string{"pkg/admin", "pkg/svidfiles", "pkg/workload"}, test: []string{"internal/proctest", "pkg/entry", "pkg/store"}},

	// The agent assembles everything below it.
	"agent": {
		use: []string{"attestor", "ca", "conf", "pkg/admin", "pkg/admission", "pkg/entry", "pkg/federation",
			"pkg/fleet", "pkg/ownership", "pkg/peercred", "pkg/sds", "pkg/store", "pkg/store/etcdstore", "pkg/store/mirror",
			"pkg/telemetry", "pkg/wire", "pkg/workload", "pkg/workloadapi"},
		test: []string{"internal/etcdtest", "internal/proctest", "internal/testpki"},
	},
	"attestor": {use: []string{"pkg/entry", "pkg/peercred"}, test: []string{"internal/proctest"}},
	"ca":       {use: []string{"pkg/entry", "pkg/ownership", "pkg/workload"}, test: []string{"internal/testpki"}},
	"conf":     {use: []string{"pkg/entry"}},

	// The protocol front-ends see Views and the wire, never how Views are made; they charge
	// what a stream holds to its uid's budget (pkg/admission).
	"pkg/sds":         {use: []string{"pkg/admission", "pkg/peercred", "pkg/wire", "pkg/workload"}, test: []string{"internal/proctest", "pkg/workload/workloadtest"}},
	"pkg/workloadapi": {use: []string{"pkg/admission", "pkg/peercred", "pkg/wire", "pkg/workload"}, test: []string{"pkg/workload/workloadtest"}},

	"pkg/admin":                 {use: []string{"pkg/entry", "pkg/federation", "pkg/store", "pkg/workload"}, test: []string{"internal/proctest", "pkg/workload/workloadtest"}},
	"pkg/federation":            {use: []string{"pkg/store", "pkg/workload"}, test: []string{"pkg/workload/workloadtest"}},
	"pkg/fleet":                 {use: []string{"pkg/entry", "pkg/store", "pkg/store/etcdstore", "pkg/workload"}, test: []string{"internal/etcdtest", "internal/proctest", "pkg/federation", "pkg/workload/workloadtest"}},
	"pkg/ownership":             {},
	"pkg/admission":             {use: []string{"pkg/peercred"}, test: []string{"conf", "internal/proctest"}},
	"pkg/entry":                 {},
	"pkg/peercred":              {use: []string{"pkg/ownership"}, test: []string{"internal/proctest"}},
	"pkg/store":                 {use: []string{"pkg/entry"}, test: []string{"pkg/store/storetest"}},
	"pkg/store/storetest":       {use: []string{"pkg/entry", "pkg/store"}},
	"pkg/store/etcdstore":       {use: []string{"pkg/entry", "pkg/store"}, test: []string{"internal/etcdtest", "pkg/store/storetest"}},
	"pkg/store/mirror":          {use: []string{"pkg/entry", "pkg/store"}, test: []string{"internal/etcdtest", "pkg/store/etcdstore"}},
	"pkg/svidfiles":             {},
	"pkg/telemetry":             {use: []string{"pkg/admission", "pkg/sds", "pkg/workloadapi"}},
	"pkg/wire":                  {},
	"pkg/workload":              {use: []string{"pkg/peercred"}},
	"pkg/workload/workloadtest": {use: []string{"internal/proctest", "pkg/peercred", "pkg/wire", "pkg/workload"}},
	"internal/proctest":         {use: []string{"pkg/peercred"}},
	"internal/testpki":          {},
	"internal/etcdtest":         {},
	"examples":                  {test: []string{"conf", "pkg/svidfiles", "pkg/telemetry"}},

	// End-to-end tests and load tools drive the binaries from outside; profsvidd is svidd's
	// main with profiling, so it may import what cmd/svidd does.
	"test":                  {test: []string{"conf", "internal/etcdtest", "internal/proctest", "internal/testpki", "pkg/admin", "pkg/svidfiles", "test/envoy"}},
	"test/envoy":            {test: []string{"internal/proctest"}},
	"test/cmd/fakeenvoy":    {use: []string{"test/envoy"}, test: []string{"internal/proctest"}},
	"test/cmd/flood":        {use: []string{"test/envoy"}},
	"test/cmd/spiffeclient": {},
	"test/load":             {use: []string{"pkg/admin", "test/envoy"}},
	"test/load/plot":        {},
	"test/load/fleet":       {test: []string{"internal/etcdtest", "internal/proctest", "pkg/admin", "pkg/entry", "pkg/store", "pkg/store/etcdstore", "pkg/store/mirror", "pkg/workload", "test/envoy"}},
	"test/load/floorsds":    {},
	"test/load/profsvidd":   {use: []string{"agent", "conf"}},
}

type listedPackage struct {
	ImportPath   string
	Deps         []string
	Imports      []string
	TestImports  []string
	XTestImports []string
	Error        *struct{ Err string }
}

// listPackages runs go list over the module: Imports are a package's direct imports, Deps
// what its own files pull in transitively.
func listPackages(t *testing.T) map[string]listedPackage {
	t.Helper()
	cmd := exec.Command("go", "list", "-e", "-json=ImportPath,Deps,Imports,TestImports,XTestImports,Error", "./...")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v: %s", err, stderr.String())
	}
	pkgs := map[string]listedPackage{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p listedPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decoding go list output: %v", err)
		}
		if p.Error != nil {
			t.Fatalf("go list %s: %s", p.ImportPath, p.Error.Err)
		}
		pkgs[ours(p.ImportPath)] = p
	}
	if len(pkgs) == 0 {
		t.Fatal("go list found no packages")
	}
	return pkgs
}

// ours returns the path of a package of the module below its root ("" for the root), or
// "-" for any other package.
func ours(path string) string {
	if path == module {
		return ""
	}
	if rest, ok := strings.CutPrefix(path, module+"/"); ok {
		return rest
	}
	return "-"
}

// TestDependencies holds every package of the module to the imports of ours listed in
// allowed: a package missing from the list, or an import of ours it does not list, fails.
func TestDependencies(t *testing.T) {
	pkgs := listPackages(t)
	for name, p := range pkgs {
		rule, ok := allowed[name]
		if !ok {
			t.Errorf("package %s is new: state in deps_test.go (allowed) which packages of ours it may import", p.ImportPath)
			continue
		}
		check := func(kind string, imports, may []string) {
			for _, imp := range imports {
				dep := ours(imp)
				if dep == "-" || dep == name {
					continue
				}
				if !slices.Contains(may, dep) {
					t.Errorf("%s imports %s in its %s, which deps_test.go does not allow", p.ImportPath, imp, kind)
				}
			}
		}
		check("own files", p.Imports, rule.use)
		mayInTests := slices.Concat(rule.use, rule.test)
		check("tests", p.TestImports, mayInTests)
		check("tests", p.XTestImports, mayInTests)
	}
	for name := range allowed {
		if _, ok := pkgs[name]; !ok {
			t.Errorf("deps_test.go lists %q, which is no package of the module any more: remove it", name)
		}
	}
}

// TestLayers holds what DESIGN.md says of the tree's direction, over transitive
// dependencies, so that no line added to allowed can quietly break it.
func TestLayers(t *testing.T) {
	pkgs := listPackages(t)
	// forbid fails when a package matching from depends, through its own files, on a package
	// matching to.
	forbid := func(why string, from, to func(string) bool) {
		t.Helper()
		for name, p := range pkgs {
			if !from(name) {
				continue
			}
			for _, d := range p.Deps {
				if dep := ours(d); dep != "-" && dep != name && to(dep) {
					t.Errorf("%s depends on %s: %s", p.ImportPath, d, why)
				}
			}
		}
	}
	under := func(prefixes ...string) func(string) bool {
		return func(name string) bool {
			for _, p := range prefixes {
				if name == p || strings.HasPrefix(name, p+"/") {
					return true
				}
			}
			return false
		}
	}
	is := func(names ...string) func(string) bool {
		return func(name string) bool { return slices.Contains(names, name) }
	}
	not := func(f func(string) bool) func(string) bool { return func(n string) bool { return !f(n) } }
	testOnly := func(name string) bool {
		// test/..., internal/proctest, testpki and etcdtest, and fixtures named after their package (pkg/store/storetest).
		return under("test", "internal/proctest", "internal/testpki", "internal/etcdtest")(name) || path.Base(name) == path.Base(path.Dir(name))+"test"
	}

	forbid("the agent sits under cmd only", not(is("cmd/svidd", "test/load/profsvidd")), under("agent", "cmd"))
	forbid("pkg/* is the library the agent assembles; it never reaches up", under("pkg"), under("agent", "attestor", "ca", "conf", "cmd"))
	forbid("the protocol front-ends translate Views; they never mint, attest or read the store",
		is("pkg/sds", "pkg/workloadapi"), not(is("pkg/workload", "pkg/wire", "pkg/peercred", "pkg/ownership", "pkg/admission")))
	forbid("attestor, ca and conf are siblings under the agent", is("attestor", "ca", "conf"), under("attestor", "ca", "conf", "pkg/store", "pkg/admin", "pkg/sds", "pkg/workloadapi"))
	forbid("pkg/entry is pure: it depends on nothing of ours", is("pkg/entry"), func(string) bool { return true })
	forbid("test helpers stay out of what ships", not(testOnly), testOnly)
}
