package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/federation"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/workload"
)

// Config for the admin server.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	Store       store.Store
	// Bundle returns the current own-trust-domain bundle.
	Bundle func() *workload.Bundle
	// CATTL is the CA's lifetime: an entry whose TTL the CA would not mint under it
	// (entry.CheckSVIDTTL) is refused when written rather than failing when a workload asks
	// for it. Zero checks only the minimum.
	CATTL time.Duration
	// Status reports the agent's state (nil: GET /v1/status answers 404).
	Status func() Status
	// CA lists and steps the CA rotation (nil: the /v1/ca endpoints answer 404).
	CA CA
	// Federation manages federated bundles (nil: the /v1/bundles endpoints answer 404).
	Federation Federation
	// Ready returns nil when the agent is ready to serve workloads.
	Ready func(ctx context.Context) error
	// Explainer answers /v1/explain and /v1/callers and warns about entries written (nil: the
	// endpoints answer 404, no warnings).
	Explainer Explainer
	// Nodes lists the fleet's hosts (nil: no fleet registry; /v1/nodes answers 404 saying so).
	Nodes  Nodes
	Logger *slog.Logger
}

// CA is the part of the CA the operator may drive: list the authorities, and force the
// rotation steps that otherwise happen on schedule.
type CA interface {
	Authorities() []Authority
	Prepare() error
	Activate() error
}

// Server serves the admin API.
type Server struct {
	cfg Config
	log *slog.Logger
	mux *http.ServeMux
}

// New returns an admin server.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Bundle == nil {
		return nil, errors.New("admin: Store and Bundle are required")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("admin: trust domain is required")
	}
	if cfg.Ready == nil {
		cfg.Ready = func(context.Context) error { return nil }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "admin"), mux: http.NewServeMux()}
	s.mux.HandleFunc("POST /v1/entries", s.createEntry)
	s.mux.HandleFunc("GET /v1/entries", s.listEntries)
	s.mux.HandleFunc("GET /v1/entries/{id}", s.getEntry)
	s.mux.HandleFunc("PUT /v1/entries/{id}", s.updateEntry)
	s.mux.HandleFunc("DELETE /v1/entries/{id}", s.deleteEntry)
	s.mux.HandleFunc("GET /v1/bundle", s.bundle)
	s.mux.HandleFunc("GET /v1/health", s.health)
	s.registerBundles()
	if cfg.Status != nil {
		s.mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, cfg.Status()) })
	}
	if cfg.CA != nil {
		s.mux.HandleFunc("GET /v1/ca", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, cfg.CA.Authorities()) })
		s.mux.HandleFunc("POST /v1/ca/prepare", s.caStep("prepare", cfg.CA.Prepare))
		s.mux.HandleFunc("POST /v1/ca/activate", s.caStep("activate", cfg.CA.Activate))
	}
	s.registerExplain()
	s.registerNodes()
	return s, nil
}

// Handler returns the HTTP handler (for tests and for mounting).
func (s *Server) Handler() http.Handler { return s.mux }

// Serve answers on ln until ctx is done, then shuts down gracefully (bounded).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("admin server: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	<-errc
	return nil
}

func (s *Server) createEntry(w http.ResponseWriter, r *http.Request) {
	var in Entry
	if !s.decode(w, r, &in) {
		return
	}
	in.ID = ""
	e, err := s.fromWire(in)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out, err := s.cfg.Store.CreateEntry(r.Context(), e)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("entry created", "entry_id", out.ID, "spiffe_id", out.SPIFFEID.String())
	we := EntryToWire(out)
	we.Warnings = s.warnings(out)
	writeJSON(w, http.StatusCreated, we)
}

func (s *Server) updateEntry(w http.ResponseWriter, r *http.Request) {
	var in Entry
	if !s.decode(w, r, &in) {
		return
	}
	in.ID = r.PathValue("id")
	e, err := s.fromWire(in)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.notConfigOwned(r.Context(), e.ID); err != nil {
		s.fail(w, r, err)
		return
	}
	out, err := s.cfg.Store.UpdateEntry(r.Context(), e)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("entry updated", "entry_id", out.ID, "spiffe_id", out.SPIFFEID.String())
	we := EntryToWire(out)
	we.Warnings = s.warnings(out)
	writeJSON(w, http.StatusOK, we)
}

func (s *Server) deleteEntry(w http.ResponseWriter, r *http.Request) {
	if err := s.notConfigOwned(r.Context(), r.PathValue("id")); err != nil {
		s.fail(w, r, err)
		return
	}
	out, err := s.cfg.Store.DeleteEntry(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("entry deleted", "entry_id", out.ID, "spiffe_id", out.SPIFFEID.String())
	writeJSON(w, http.StatusOK, EntryToWire(out))
}

func (s *Server) getEntry(w http.ResponseWriter, r *http.Request) {
	out, err := s.cfg.Store.GetEntry(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, EntryToWire(out))
}

func (s *Server) listEntries(w http.ResponseWriter, r *http.Request) {
	var f store.Filter
	q := r.URL.Query()
	if v := q.Get("spiffe_id"); v != "" {
		id, err := spiffeid.FromString(v)
		if err != nil {
			s.fail(w, r, fmt.Errorf("%w: spiffe ID %q: %v", entry.ErrInvalid, v, err))
			return
		}
		f.SPIFFEID = id
	}
	if sel := q["selector"]; len(sel) > 0 {
		ss, err := entry.ParseSelectors(sel)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		f.Selectors = ss
	}
	es, err := s.cfg.Store.ListEntries(r.Context(), f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]Entry, len(es))
	for i, e := range es {
		out[i] = EntryToWire(e)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) bundle(w http.ResponseWriter, r *http.Request) {
	b := s.cfg.Bundle()
	if b == nil {
		s.fail(w, r, errors.New("no bundle yet"))
		return
	}
	writeJSON(w, http.StatusOK, ownSPIFFE(Bundle{TrustDomain: b.TrustDomain.Name(), Sequence: b.Sequence, PEM: string(b.PEM)}, func() ([]byte, error) {
		sb, err := federation.FromWorkload(b, 0)
		if err != nil {
			return nil, err
		}
		return federation.Marshal(sb)
	}))
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	if err := s.cfg.Ready(r.Context()); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, Error{Error: "not ready: " + err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, Health{Ready: true})
}

func (s *Server) fromWire(in Entry) (entry.Entry, error) {
	e, err := in.FromWire(s.cfg.TrustDomain)
	if err != nil {
		return e, err
	}
	if e.X509SVIDTTL != 0 {
		if err := entry.CheckSVIDTTL(e.X509SVIDTTL, s.cfg.CATTL); err != nil {
			return e, fmt.Errorf("x509_svid_ttl %w", err)
		}
	}
	return e, nil
}

// errConfigOwned is a write refused because the entry belongs to the config file: 409.
var errConfigOwned = errors.New("entry is declared in the config file")

// notConfigOwned refuses to change or delete an entry declared in the config file: svidd
// makes such entries equal to the file's blocks at every start and reload, so the change
// would be acknowledged now and undone then. An entry's name never changes (the API cannot
// set one, reconciling keeps it), so checking before writing is not racy.
func (s *Server) notConfigOwned(ctx context.Context, id string) error {
	cur, err := s.cfg.Store.GetEntry(ctx, id)
	if err != nil {
		return err
	}
	if cur.Name != "" {
		return fmt.Errorf("%w: entry %s comes from the block entry %q of the config file; change or remove it there and reload svidd (SIGHUP), or it would come back at the next reload", errConfigOwned, id, cur.Name)
	}
	return nil
}

// caStep forces one CA rotation step. A step that is not possible now (nothing prepared to
// activate, already prepared) is the operator's to fix: 409 with the reason.
func (s *Server) caStep(name string, step func() error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := step(); err != nil {
			s.log.Warn("CA step refused", "step", name, "error", err)
			writeJSON(w, http.StatusConflict, Error{Error: fmt.Sprintf("CA %s: %v", name, err)})
			return
		}
		s.log.Info("CA step forced by operator", "step", name)
		writeJSON(w, http.StatusOK, s.cfg.CA.Authorities())
	}
}

// decode reads a bounded JSON body with no unknown fields.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, Error{Error: "invalid request body: " + err.Error()})
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		writeJSON(w, http.StatusBadRequest, Error{Error: "invalid request body: trailing data after the JSON object"})
		return false
	}
	return true
}

// fail maps an error to a status: bad input is the caller's to fix and is told in full; a
// store failure is logged and reported without internals.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, entry.ErrInvalid), isBadBundle(err):
		writeJSON(w, http.StatusBadRequest, Error{Error: err.Error()})
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrBundleNotFound):
		writeJSON(w, http.StatusNotFound, Error{Error: err.Error()})
	case errors.Is(err, store.ErrAlreadyExists), errors.Is(err, errConfigOwned):
		writeJSON(w, http.StatusConflict, Error{Error: err.Error()})
	case errors.Is(err, store.ErrUnavailable):
		writeJSON(w, http.StatusServiceUnavailable, Error{Error: err.Error()})
	case errors.Is(err, store.ErrReadOnly):
		// This host may not write the shared registry: the text says where to register.
		writeJSON(w, http.StatusForbidden, Error{Error: err.Error()})
	default:
		s.log.Error("admin request failed", "method", r.Method, "path", r.URL.Path, "error", err)
		msg := "internal error: " + err.Error()
		if strings.Contains(msg, "\n") {
			msg = strings.SplitN(msg, "\n", 2)[0]
		}
		writeJSON(w, http.StatusInternalServerError, Error{Error: msg})
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
