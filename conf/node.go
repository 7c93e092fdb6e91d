package conf

import (
	"fmt"

	"github.com/svidd/svidd/pkg/entry"
)

// node checks agent.node_name and agent.node_groups: each becomes a selector of every caller
// on the host (node:name:NAME, node:group:G), so each must be one entries can name
// (entry.ValidateNodeName, entry.ValidateNodeGroup), and a group listed twice is a mistake.
func (v *validator) node(c Config) {
	switch {
	case v.bad("agent.node_name"):
	case c.NodeName == "":
		v.errf("agent.node_name", "node_name must not be empty (default: the hostname)")
	default:
		if err := entry.ValidateNodeName(c.NodeName); err != nil {
			v.errf("agent.node_name", "%s", trimInvalid(err))
		}
	}
	if v.badUnder("agent.node_groups") {
		return
	}
	first := make(map[string]int, len(c.NodeGroups))
	for i, g := range c.NodeGroups {
		at := v.at(fmt.Sprintf("agent.node_groups.%d", i))
		if err := entry.ValidateNodeGroup(g); err != nil {
			v.diags = append(v.diags, newDiag("agent.node_groups", at, trimInvalid(err)))
			continue
		}
		if j, dup := first[g]; dup {
			v.diags = append(v.diags, newDiag("agent.node_groups", at,
				fmt.Sprintf("node group %q is listed twice (elements %d and %d); list each group once", g, j+1, i+1)))
			continue
		}
		first[g] = i
	}
}
