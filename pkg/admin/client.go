package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"time"
)

// Client talks to the admin API over its Unix socket.
type Client struct {
	socketPath string
	hc         *http.Client
}

// NewClient returns a client for the admin socket at socketPath.
func NewClient(socketPath string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		DisableKeepAlives: true,
	}
	return &Client{socketPath: socketPath, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// StatusError is a non-2xx answer; Message is the server's explanation.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string { return e.Message }

// IsNotFound reports whether err is the server saying the thing does not exist.
func IsNotFound(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://svidd"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.explainDialError(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("reading answer from svidd: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return &StatusError{Code: resp.StatusCode, Message: e.Error}
		}
		return &StatusError{Code: resp.StatusCode, Message: fmt.Sprintf("svidd answered %s", resp.Status)}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decoding answer from svidd: %w", err)
		}
	}
	return nil
}

// explainDialError turns the usual socket failures into a sentence an operator can act on.
func (c *Client) explainDialError(err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("cannot reach svidd at %s: is it running? (%w)", c.socketPath, err)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("cannot reach svidd at %s: permission denied; the admin socket answers only svidd's own user and root", c.socketPath)
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
		return fmt.Errorf("svidd at %s closed the connection: the admin socket answers only svidd's own user and root (%w)", c.socketPath, err)
	}
	return fmt.Errorf("talking to svidd at %s: %w", c.socketPath, err)
}

// CreateEntry registers e.
func (c *Client) CreateEntry(ctx context.Context, e Entry) (Entry, error) {
	var out Entry
	err := c.do(ctx, http.MethodPost, "/v1/entries", e, &out)
	return out, err
}

// UpdateEntry replaces entry e.ID.
func (c *Client) UpdateEntry(ctx context.Context, e Entry) (Entry, error) {
	var out Entry
	err := c.do(ctx, http.MethodPut, "/v1/entries/"+url.PathEscape(e.ID), e, &out)
	return out, err
}

// DeleteEntry deletes entry id and returns it as it was.
func (c *Client) DeleteEntry(ctx context.Context, id string) (Entry, error) {
	var out Entry
	err := c.do(ctx, http.MethodDelete, "/v1/entries/"+url.PathEscape(id), nil, &out)
	return out, err
}

// GetEntry returns entry id.
func (c *Client) GetEntry(ctx context.Context, id string) (Entry, error) {
	var out Entry
	err := c.do(ctx, http.MethodGet, "/v1/entries/"+url.PathEscape(id), nil, &out)
	return out, err
}

// ListEntries lists entries, optionally by SPIFFE ID and selectors (all must be present).
func (c *Client) ListEntries(ctx context.Context, spiffeID string, selectors []string) ([]Entry, error) {
	q := url.Values{}
	if spiffeID != "" {
		q.Set("spiffe_id", spiffeID)
	}
	for _, s := range selectors {
		q.Add("selector", s)
	}
	path := "/v1/entries"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out []Entry
	err := c.do(ctx, http.MethodGet, path, nil, &out)
	return out, err
}

// Bundle returns the agent's own trust bundle.
func (c *Client) Bundle(ctx context.Context) (Bundle, error) {
	var out Bundle
	err := c.do(ctx, http.MethodGet, "/v1/bundle", nil, &out)
	return out, err
}

// Health returns the agent's readiness. A not-ready agent is not an error: check Ready.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var out Health
	err := c.do(ctx, http.MethodGet, "/v1/health", nil, &out)
	var se *StatusError
	if errors.As(err, &se) && se.Code == http.StatusServiceUnavailable {
		return Health{Ready: false, Reason: se.Message}, nil
	}
	return out, err
}

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var out Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &out)
	return out, err
}

// Authorities lists the CAs in the bundle.
func (c *Client) Authorities(ctx context.Context) ([]Authority, error) {
	var out []Authority
	err := c.do(ctx, http.MethodGet, "/v1/ca", nil, &out)
	return out, err
}

// CAStep forces a rotation step: "prepare" or "activate". It returns the authorities after it.
func (c *Client) CAStep(ctx context.Context, step string) ([]Authority, error) {
	var out []Authority
	err := c.do(ctx, http.MethodPost, "/v1/ca/"+url.PathEscape(step), nil, &out)
	return out, err
}
