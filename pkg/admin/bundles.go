package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/federation"
	"github.com/svidd/svidd/pkg/store"
)

// Federation is the federated bundles as the operator manages them (svidctl bundle
// list|show|set|delete). Set's errors about the input wrap federation.ErrInvalidBundle;
// Delete of an unknown trust domain wraps store.ErrBundleNotFound.
type Federation interface {
	// List and Get fail only where the bundles live elsewhere (a registrar reads etcd): an
	// unreadable registry is an error, never an empty list. Get of an unknown trust domain
	// wraps store.ErrBundleNotFound.
	List(ctx context.Context) ([]FederatedBundle, error)
	Get(ctx context.Context, td spiffeid.TrustDomain) (Bundle, error)
	Set(ctx context.Context, td spiffeid.TrustDomain, format string, data []byte) error
	Delete(ctx context.Context, td spiffeid.TrustDomain) error
}

func (s *Server) registerBundles() {
	if s.cfg.Federation == nil {
		return
	}
	s.mux.HandleFunc("GET /v1/bundles", func(w http.ResponseWriter, r *http.Request) {
		out, err := s.cfg.Federation.List(r.Context())
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if out == nil {
			out = []FederatedBundle{}
		}
		writeJSON(w, http.StatusOK, out)
	})
	s.mux.HandleFunc("GET /v1/bundles/{td}", func(w http.ResponseWriter, r *http.Request) {
		td, ok := s.trustDomainParam(w, r)
		if !ok {
			return
		}
		b, err := s.cfg.Federation.Get(r.Context(), td)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, b)
	})
	s.mux.HandleFunc("PUT /v1/bundles/{td}", func(w http.ResponseWriter, r *http.Request) {
		td, ok := s.trustDomainParam(w, r)
		if !ok {
			return
		}
		var in SetBundle
		if !s.decode(w, r, &in) {
			return
		}
		if err := s.cfg.Federation.Set(r.Context(), td, in.Format, []byte(in.Data)); err != nil {
			s.fail(w, r, err)
			return
		}
		s.log.Info("federated bundle set by the operator", "trust_domain", td.Name())
		b, _ := s.cfg.Federation.Get(r.Context(), td)
		writeJSON(w, http.StatusOK, b)
	})
	s.mux.HandleFunc("DELETE /v1/bundles/{td}", func(w http.ResponseWriter, r *http.Request) {
		td, ok := s.trustDomainParam(w, r)
		if !ok {
			return
		}
		if err := s.cfg.Federation.Delete(r.Context(), td); err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, Bundle{TrustDomain: td.Name()})
	})
}

// trustDomainParam parses the {td} path element ("other.org" or "spiffe://other.org",
// escaped); it answers 400 itself when it is not a foreign trust domain.
func (s *Server) trustDomainParam(w http.ResponseWriter, r *http.Request) (spiffeid.TrustDomain, bool) {
	td, err := entry.ParseTrustDomain(r.PathValue("td"))
	if err == nil && td == s.cfg.TrustDomain {
		err = fmt.Errorf("%w: %s is svidd's own trust domain; its bundle comes from the CA (svidctl bundle show without -id)", federation.ErrInvalidBundle, td.Name())
	}
	if err != nil {
		s.fail(w, r, err)
		return spiffeid.TrustDomain{}, false
	}
	return td, true
}

// ownSPIFFE is the own bundle as a SPIFFE bundle document (svidctl bundle show -format spiffe).
func ownSPIFFE(b Bundle, doc func() ([]byte, error)) Bundle {
	if d, err := doc(); err == nil {
		b.SPIFFE = json.RawMessage(d)
	}
	return b
}

// isBadBundle reports whether err is the operator's bundle input at fault.
func isBadBundle(err error) bool { return errors.Is(err, federation.ErrInvalidBundle) }

// ListBundles lists the federated trust domains.
func (c *Client) ListBundles(ctx context.Context) ([]FederatedBundle, error) {
	var out []FederatedBundle
	err := c.do(ctx, http.MethodGet, "/v1/bundles", nil, &out)
	return out, err
}

// FederatedBundle returns the bundle of a federated trust domain (name or spiffe:// ID).
func (c *Client) FederatedBundle(ctx context.Context, td string) (Bundle, error) {
	var out Bundle
	err := c.do(ctx, http.MethodGet, "/v1/bundles/"+url.PathEscape(td), nil, &out)
	return out, err
}

// SetBundle stores a federated bundle by hand; format is "spiffe" or "pem".
func (c *Client) SetBundle(ctx context.Context, td, format string, data []byte) (Bundle, error) {
	var out Bundle
	err := c.do(ctx, http.MethodPut, "/v1/bundles/"+url.PathEscape(td), SetBundle{Format: format, Data: string(data)}, &out)
	return out, err
}

// DeleteBundle deletes a federated bundle.
func (c *Client) DeleteBundle(ctx context.Context, td string) error {
	return c.do(ctx, http.MethodDelete, "/v1/bundles/"+url.PathEscape(td), nil, nil)
}

// NewFederation is the Federation of a federation.Manager.
func NewFederation(m *federation.Manager) Federation { return managerFederation{m} }

type managerFederation struct{ m *federation.Manager }

func (f managerFederation) List(context.Context) ([]FederatedBundle, error) {
	st := f.m.Status()
	out := make([]FederatedBundle, 0, len(st))
	for _, s := range st {
		out = append(out, FederatedBundle{
			TrustDomain:       s.TrustDomain.Name(),
			HasBundle:         s.HasBundle,
			Source:            string(s.Source),
			Version:           s.Version,
			UpdatedAt:         s.UpdatedAt,
			X509Authorities:   s.X509Authorities,
			JWTAuthorities:    s.JWTAuthorities,
			Configured:        s.Configured,
			BundleEndpointURL: s.URL,
			Profile:           s.Profile,
			ToAllWorkloads:    s.ToAllWorkloads,
			LastRefresh:       s.LastRefresh,
			NextRefresh:       s.NextRefresh,
			LastError:         s.LastError,
		})
	}
	return out, nil
}

func (f managerFederation) Get(_ context.Context, td spiffeid.TrustDomain) (Bundle, error) {
	b, doc, ok := f.m.Bundle(td)
	if !ok {
		return Bundle{}, fmt.Errorf("%w: %s", store.ErrBundleNotFound, td.Name())
	}
	return Bundle{TrustDomain: td.Name(), Sequence: b.Sequence, PEM: string(b.PEM), SPIFFE: doc}, nil
}

func (f managerFederation) Set(ctx context.Context, td spiffeid.TrustDomain, format string, data []byte) error {
	return f.m.Set(ctx, td, format, data)
}

func (f managerFederation) Delete(ctx context.Context, td spiffeid.TrustDomain) error {
	return f.m.Delete(ctx, td)
}
