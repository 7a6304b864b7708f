package api

import "time"

// Token roles: a user token may call every endpoint but node registration;
// an agent token may only register its node and act for it; a gateway
// token may only follow apps, instances and routes, wake apps and report
// their last access (what `berth gateway` does).
const (
	RoleUser    = "user"
	RoleAgent   = "agent"
	RoleGateway = "gateway"
)

// MaxTokenDescription bounds a token's description.
const MaxTokenDescription = 200

// Token is an API token as the server keeps it: never the token itself,
// only its SHA-256. A token reads "<id>.<secret>".
type Token struct {
	ID          string `json:"id"`
	Role        string `json:"role"`
	Description string `json:"description,omitempty"`
	// Node is, for an agent token, the node it registered first: the only
	// one it may act for from then on.
	Node    string    `json:"node,omitempty"`
	Created time.Time `json:"created"`
	// Hash is the SHA-256 of the whole token, hex; only in the store,
	// never in an answer.
	Hash    string `json:"hash,omitempty"`
	Version int64  `json:"version,omitempty"`
}

// TokenRequest is the body of POST /v1/tokens.
type TokenRequest struct {
	Role        string `json:"role"`
	Description string `json:"description,omitempty"`
}

// Validate checks the role and the description.
func (r TokenRequest) Validate() error {
	if r.Role != RoleUser && r.Role != RoleAgent && r.Role != RoleGateway {
		return fieldErr("role", "%q is not a role: want %s, %s or %s", r.Role, RoleAgent, RoleGateway, RoleUser)
	}
	if len(r.Description) > MaxTokenDescription {
		return fieldErr("description", "%d bytes is longer than %d", len(r.Description), MaxTokenDescription)
	}
	return nil
}

// NewToken answers POST /v1/tokens: the only time the token is shown.
type NewToken struct {
	Token
	Secret string `json:"token"`
}
