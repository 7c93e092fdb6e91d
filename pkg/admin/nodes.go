package admin

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"time"
)

// Nodes lists and forgets the hosts of a fleet registry (store "etcd").
type Nodes interface {
	// Nodes lists every host that has a node record or is alive. An unreachable registry is
	// an Unavailable error (503).
	Nodes(ctx context.Context) (NodeList, error)
	// ForgetNode deletes the record of a host that is gone and returns it as it was. A host
	// that is up: ErrNodeUp (409); no such host: store.ErrNotFound (404); this host's
	// credentials may not: ErrForbidden (403).
	ForgetNode(ctx context.Context, name string) (Node, error)
}

// ErrNodeUp refuses to forget a host that is up.
var ErrNodeUp = errors.New("the host is up")

// ErrForbidden is a registry write this host's credentials do not allow.
var ErrForbidden = errors.New("not allowed with this host's registry credentials")

// Unavailable marks err as the registry being unreachable: the answer is 503 with err's text.
func Unavailable(err error) error { return unavailableError{err} }

type unavailableError struct{ error }

func (e unavailableError) Unwrap() error { return e.error }

// errNoFleet answers the node endpoints on a host without a fleet registry.
const errNoFleet = `the node list needs a fleet registry: svidd keeps node records in etcd (store "etcd"), and this host uses its own SQLite store`

// NodeList is the answer of GET /v1/nodes (and `svidctl node list -output json`).
type NodeList struct {
	Now time.Time `json:"now"`
	// LastChange is the newest registry change known (etcd revision). A host whose revision
	// is below it is behind when its record was written more than BehindAfter seconds after
	// that change was made (README "Running a fleet").
	LastChange  int64  `json:"last_change"`
	BehindAfter int64  `json:"behind_after_seconds"`
	Nodes       []Node `json:"nodes"`
}

// Node is one host of the fleet.
type Node struct {
	Name   string   `json:"name"`
	Groups []string `json:"groups"`
	// State is up, behind or gone (no alive key: stopped, crashed or cut off from etcd).
	State   string `json:"state"`
	Version string `json:"version,omitempty"`
	// CANotAfter is when the host's active CA expires.
	CANotAfter time.Time `json:"ca_not_after,omitzero"`
	// Revision: every registry change up to this etcd revision is in the host's copy;
	// LastChange is the newest entry change among them.
	Revision   int64     `json:"revision"`
	LastChange int64     `json:"last_change"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	// LastSeen is when the host last wrote its record (every minute, or when it changed).
	LastSeen time.Time `json:"last_seen,omitzero"`
	// Problem says why the host's record could not be read.
	Problem string `json:"problem,omitempty"`
}

func (s *Server) registerNodes() {
	s.mux.HandleFunc("GET /v1/nodes", func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.Nodes == nil {
			writeJSON(w, http.StatusNotFound, Error{Error: errNoFleet})
			return
		}
		out, err := s.cfg.Nodes.Nodes(r.Context())
		if err != nil {
			s.nodeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	})
	s.mux.HandleFunc("DELETE /v1/nodes/{name}", func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.Nodes == nil {
			writeJSON(w, http.StatusNotFound, Error{Error: errNoFleet})
			return
		}
		out, err := s.cfg.Nodes.ForgetNode(r.Context(), r.PathValue("name"))
		if err != nil {
			s.nodeError(w, r, err)
			return
		}
		s.log.Info("node record forgotten", "node_name", out.Name)
		writeJSON(w, http.StatusOK, out)
	})
}

func (s *Server) nodeError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, ErrNodeUp):
		writeJSON(w, http.StatusConflict, Error{Error: err.Error()})
	case errors.Is(err, ErrForbidden):
		writeJSON(w, http.StatusForbidden, Error{Error: err.Error()})
	case errors.As(err, new(unavailableError)):
		writeJSON(w, http.StatusServiceUnavailable, Error{Error: err.Error()})
	default:
		s.fail(w, r, err)
	}
}

// Nodes lists the fleet's hosts.
func (c *Client) Nodes(ctx context.Context) (NodeList, error) {
	var out NodeList
	err := c.do(ctx, http.MethodGet, "/v1/nodes", nil, &out)
	return out, err
}

// ForgetNode deletes a gone host's record and returns it as it was.
func (c *Client) ForgetNode(ctx context.Context, name string) (Node, error) {
	var out Node
	err := c.do(ctx, http.MethodDelete, "/v1/nodes/"+url.PathEscape(name), nil, &out)
	return out, err
}
