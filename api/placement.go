package api

import (
	"fmt"
	"regexp"
)

// Placement says which nodes an app's instances may go to and how they are
// spread over them. A nil Placement means: any ready node that fits, spread
// per node (what the scheduler did before placement rules existed).
type Placement struct {
	// Constraints on node labels, all of which must hold: "<label> ==
	// <value>" or "<label> != <value>" (spaces around the operator are
	// optional). A node without the label fails == and passes !=.
	Constraints []string `json:"constraints,omitempty"`
	// Spread is the node label whose values the instances of the app are
	// spread evenly over; SpreadNode (the default) spreads per node. A node
	// without the label counts as the value "". A node label named "node"
	// therefore cannot be spread over.
	Spread string `json:"spread,omitempty"`
	// Strategy is StrategySpread (the default) or StrategyBinpack.
	Strategy string `json:"strategy,omitempty"`
	// MaxPerNode caps the instances of the app on one node; 0: no cap.
	MaxPerNode int `json:"max_per_node,omitempty"`
}

const (
	StrategySpread  = "spread"  // fewest instances of the app per spread value first
	StrategyBinpack = "binpack" // fullest node first, so that whole nodes stay free
	SpreadNode      = "node"    // Spread value meaning "each node on its own"

	MaxConstraints = 32
)

// Constraint is one parsed placement constraint on a node label.
type Constraint struct {
	Label string
	Value string
	Equal bool // == when true, != when false
}

// String is the constraint in its canonical form, "zone == a".
func (c Constraint) String() string {
	op := "!="
	if c.Equal {
		op = "=="
	}
	return c.Label + " " + op + " " + c.Value
}

// Holds reports whether a node with these labels satisfies c.
func (c Constraint) Holds(labels map[string]string) bool {
	v, ok := labels[c.Label]
	return (ok && v == c.Value) == c.Equal
}

var constraintSyntax = regexp.MustCompile(`^\s*([^\s=!]+)\s*(==|!=)\s*([^\s=!]+)\s*$`)

// ParseConstraint reads "<label> == <value>" or "<label> != <value>".
// Label and value both follow the label charset (letters, digits, . _ / -,
// starting and ending with a letter or digit).
func ParseConstraint(s string) (Constraint, error) {
	m := constraintSyntax.FindStringSubmatch(s)
	if m == nil {
		return Constraint{}, fmt.Errorf(`%q is not "<label> == <value>" or "<label> != <value>"`, s)
	}
	c := Constraint{Label: m[1], Value: m[3], Equal: m[2] == "=="}
	if !labelName.MatchString(c.Label) {
		return Constraint{}, fmt.Errorf("%q: %q is not a valid label name (letters, digits, . _ / -)", s, c.Label)
	}
	if !labelName.MatchString(c.Value) {
		return Constraint{}, fmt.Errorf("%q: %q is not a valid label value (letters, digits, . _ / -)", s, c.Value)
	}
	return c, nil
}

// Parsed returns the constraints parsed, in order. The error is a
// *FieldError naming the constraint ("placement.constraints[1]").
func (p *Placement) Parsed() ([]Constraint, error) {
	if p == nil || len(p.Constraints) == 0 {
		return nil, nil
	}
	out := make([]Constraint, len(p.Constraints))
	for i, s := range p.Constraints {
		c, err := ParseConstraint(s)
		if err != nil {
			return nil, fieldErr(fmt.Sprintf("placement.constraints[%d]", i), "%v", err)
		}
		out[i] = c
	}
	return out, nil
}

// Default fills in the spread and the strategy, so that a stored spec says
// how its instances are placed. An empty constraint list becomes nil: JSON
// drops it anyway.
func (p *Placement) Default() {
	if len(p.Constraints) == 0 {
		p.Constraints = nil
	}
	if p.Spread == "" {
		p.Spread = SpreadNode
	}
	if p.Strategy == "" {
		p.Strategy = StrategySpread
	}
}

// Validate checks a placement, defaulted or not.
func (p *Placement) Validate() error {
	if len(p.Constraints) > MaxConstraints {
		return fieldErr("placement.constraints", "%d constraints; at most %d", len(p.Constraints), MaxConstraints)
	}
	if _, err := p.Parsed(); err != nil {
		return err
	}
	switch {
	case p.Spread != "" && p.Spread != SpreadNode && !labelName.MatchString(p.Spread):
		return fieldErr("placement.spread", "%q is not a node label name (letters, digits, . _ / -) or %q", p.Spread, SpreadNode)
	case p.Strategy != "" && p.Strategy != StrategySpread && p.Strategy != StrategyBinpack:
		return fieldErr("placement.strategy", "%q is not %s or %s", p.Strategy, StrategySpread, StrategyBinpack)
	case p.MaxPerNode < 0:
		return fieldErr("placement.max_per_node", "must be >= 0")
	}
	return nil
}
