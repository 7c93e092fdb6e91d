package examples_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/svidd/svidd/pkg/telemetry"
)

// TestAlertRulesNameRealMetrics: every svidd_* metric an example alert uses exists in svidd's
// registry (histogram series by their family name), so renaming a metric breaks this test,
// not someone's pager.
func TestAlertRulesNameRealMetrics(t *testing.T) {
	raw, err := os.ReadFile("prometheus/svidd-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.UnmarshalStrict(raw, &doc); err != nil {
		t.Fatalf("alert rules are not valid YAML of the expected shape: %v", err)
	}
	families, err := telemetry.New(telemetry.Config{}).Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range families {
		have[f.GetName()] = true
	}
	name := regexp.MustCompile(`svidd_[a-z0-9_]+`)
	rules := 0
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			rules++
			if r.Alert == "" || r.Expr == "" {
				t.Errorf("rule without alert or expr: %+v", r)
			}
			for _, m := range name.FindAllString(r.Expr, -1) {
				base := m
				for _, suffix := range []string{"_bucket", "_count", "_sum"} {
					if trimmed := strings.TrimSuffix(m, suffix); trimmed != m && have[trimmed] {
						base = trimmed
					}
				}
				if !have[base] {
					t.Errorf("alert %s uses %s, which svidd does not export", r.Alert, m)
				}
			}
		}
	}
	if rules < 5 {
		t.Fatalf("%d rules parsed, want the whole file", rules)
	}
}
