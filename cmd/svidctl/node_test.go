package main

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/svidd/svidd/pkg/admin"
)

func nodesFixture() admin.NodeList {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	ca := now.Add(20 * time.Hour)
	return admin.NodeList{Now: now, LastChange: 1040, BehindAfter: 30, Nodes: []admin.Node{
		{Name: "db-1", Groups: []string{"db"}, State: "behind", Version: "v0.9.0", CANotAfter: ca, Revision: 990, LastChange: 990,
			StartedAt: now.Add(-48 * time.Hour), LastSeen: now.Add(-8 * time.Second)},
		{Name: "odd", Groups: []string{}, State: "gone", Problem: "unreadable node record: invalid character 'x'"},
		{Name: "web-1", Groups: []string{"web", "eu"}, State: "up", Version: "v1.0.0", CANotAfter: ca, Revision: 1052, LastChange: 1040,
			StartedAt: now.Add(-time.Hour), LastSeen: now.Add(-3 * time.Second)},
		{Name: "web-2", Groups: []string{"web"}, State: "gone", Version: "v1.0.0", CANotAfter: ca.Add(-3 * time.Hour), Revision: 1001, LastChange: 1001,
			StartedAt: now.Add(-30 * time.Hour), LastSeen: now.Add(-26 * time.Minute)},
	}}
}

// TestNodeListGolden: the table, and the JSON whose field names scripts depend on.
func TestNodeListGolden(t *testing.T) {
	var buf bytes.Buffer
	if err := renderNodes(&buf, nodesFixture()); err != nil {
		t.Fatal(err)
	}
	golden(t, "nodes.golden", buf.Bytes())
	buf.Reset()
	if err := printJSON(&buf, nodesFixture()); err != nil {
		t.Fatal(err)
	}
	golden(t, "nodes.json.golden", buf.Bytes())
	var back admin.NodeList
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil || back.Nodes[2].LastSeen != nodesFixture().Nodes[2].LastSeen {
		t.Fatalf("JSON does not round-trip: %v", err)
	}
	buf.Reset()
	if err := renderNodes(&buf, admin.NodeList{}); err != nil || buf.String() != "No host has a node record yet.\n" {
		t.Fatalf("empty list: %q, %v", buf.String(), err)
	}
}

func TestNodeHelp(t *testing.T) {
	for _, args := range [][]string{{"node", "-h"}, {"node", "list", "-h"}, {"node", "forget", "-h"}, {"node", "forget", "web-2", "-h"}} {
		if out, stderr, code := cliEnv(t, nil, args...); code != 0 || out == "" {
			t.Errorf("svidctl %v: exit %d, stderr %s", args, code, stderr)
		}
	}
	for _, args := range [][]string{{"node", "forget"}, {"node", "forget", "a", "b"}, {"node", "forget", "a", "-output", "json", "b"}} {
		if _, stderr, code := cliEnv(t, nil, args...); code != 2 {
			t.Errorf("svidctl %v: exit %d (%s), want 2", args, code, stderr)
		}
	}
}
