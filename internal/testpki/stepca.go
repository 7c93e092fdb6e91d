package testpki

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// StepCATemplate is the X.509 template of the provisioner svidd uses: every certificate it
// issues is a CA (pathLen 0: it signs only leaves) with the token's subject (the host) and
// SANs (the trust domain ID). README's "Running a fleet" shows the same template.
const StepCATemplate = `{
	"subject": {{ toJson .Subject }},
	"sans": {{ toJson .SANs }},
	"keyUsage": ["certSign", "crlSign"],
	"basicConstraints": {"isCA": true, "maxPathLen": 0}
}`

// StepCA is a real step-ca server run by a test, with a PKI made by the test: a root, an
// intermediate with pathLen 1 (room for svidd's host CAs under it) and a JWK provisioner
// whose template issues CA certificates.
type StepCA struct {
	URL, RootFile, Provisioner, KeyFile, PasswordFile string
	Root                                              *CA

	t      testing.TB
	dir    string
	config string
	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	logs   *os.File
}

// StepCABinary returns the pinned step-ca binary, building it with test/tools/stepca.sh
// (cached outside the repository) if needed.
func StepCABinary(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "..", "test", "tools", "stepca.sh")
	out, err := exec.Command(script).Output()
	if err != nil {
		t.Fatalf("building step-ca with %s: %v", script, err)
	}
	return strings.TrimSpace(string(out))
}

// StartStepCA writes the PKI and ca.json in dir and starts step-ca on a loopback port.
// minDuration is the provisioner's minTLSCertDuration (tests use CA lifetimes of seconds).
func StartStepCA(t testing.TB, dir string, minDuration time.Duration) *StepCA {
	t.Helper()
	bin := StepCABinary(t)
	s := &StepCA{t: t, dir: dir, Provisioner: "svidd"}
	s.Root = Root(t, "step-ca test root", NoPathLen, 72*time.Hour)
	inter := s.Root.Intermediate(t, "step-ca test intermediate", 1, 48*time.Hour)
	s.RootFile = filepath.Join(dir, "root_ca.crt")
	Write(t, s.RootFile, CertPEM(s.Root.Cert), 0o644)
	Write(t, filepath.Join(dir, "intermediate_ca.crt"), CertPEM(inter.Cert), 0o644)
	Write(t, filepath.Join(dir, "intermediate_ca_key"), inter.KeyPEM(t), 0o600)

	// The provisioner: a P-256 JWK, its private part encrypted with a password as step does.
	pk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwk := jose.JSONWebKey{Key: pk, Algorithm: string(jose.ES256), Use: "sig"}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	jwk.KeyID = base64.RawURLEncoding.EncodeToString(tp)
	password := "test password " + jwk.KeyID[:8]
	s.PasswordFile = filepath.Join(dir, "password.txt")
	Write(t, s.PasswordFile, []byte(password+"\n"), 0o600)
	priv, err := jwk.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	// As `step crypto jwk create` does: PBES2-HS256+A128KW with 600,000 iterations, A256GCM.
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.PBES2_HS256_A128KW, Key: []byte(password), PBES2Count: 600000},
		(&jose.EncrypterOptions{}).WithContentType("jwk+json"))
	if err != nil {
		t.Fatal(err)
	}
	obj, err := enc.Encrypt(priv)
	if err != nil {
		t.Fatal(err)
	}
	encKey, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	// The key file svidd reads is what `step crypto jwk create` writes: the JWE in JSON
	// serialisation (ca.json holds the compact form).
	s.KeyFile = filepath.Join(dir, "provisioner.key")
	Write(t, s.KeyFile, []byte(obj.FullSerialize()+"\n"), 0o600)
	pub := jwk.Public()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s.URL = "https://" + addr
	cfg := map[string]any{
		"root":    filepath.Join(dir, "root_ca.crt"),
		"crt":     filepath.Join(dir, "intermediate_ca.crt"),
		"key":     filepath.Join(dir, "intermediate_ca_key"),
		"address": addr,
		// step-ca binds its sign audience to these names.
		"dnsNames": []string{"127.0.0.1", "localhost"},
		"logger":   map[string]any{"format": "text"},
		"authority": map[string]any{
			// Our CA lifetimes in tests are seconds; a minute's backdate would distort them.
			"backdate": "1s",
			"provisioners": []any{map[string]any{
				"type": "JWK", "name": s.Provisioner, "key": pub, "encryptedKey": encKey,
				"claims": map[string]any{
					"minTLSCertDuration": minDuration.String(), "maxTLSCertDuration": "24h", "defaultTLSCertDuration": "6h",
				},
				"options": map[string]any{"x509": map[string]any{"template": StepCATemplate}},
			}},
		},
		"tls": map[string]any{"minVersion": 1.2, "maxVersion": 1.3, "renegotiation": false},
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	s.config = filepath.Join(dir, "ca.json")
	Write(t, s.config, data, 0o600)
	if s.logs, err = os.Create(filepath.Join(dir, "step-ca.log")); err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(bin, s.config)
	s.Start()
	t.Cleanup(func() { s.Stop(); s.logs.Close() })
	return s
}

// Start starts (or restarts) step-ca and waits until /health answers.
func (s *StepCA) Start() {
	s.t.Helper()
	s.mu.Lock()
	cmd := exec.Command(s.cmd.Path, s.cmd.Args[1:]...)
	cmd.Stdout, cmd.Stderr = s.logs, s.logs
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		s.t.Fatal(err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	done := s.done
	go func() { cmd.Wait(); close(done) }()
	s.mu.Unlock()

	pool := x509.NewCertPool()
	pool.AddCert(s.Root.Cert)
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer c.CloseIdleConnections()
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := c.Get(s.URL + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-done:
			s.t.Fatalf("step-ca exited at start:\n%s", s.Logs())
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("step-ca not healthy after 30s (%v):\n%s", err, s.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops step-ca (SIGTERM, then SIGKILL) and waits for it.
func (s *StepCA) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil || cmd.Process == nil || done == nil {
		return
	}
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Logs returns what step-ca has logged so far.
func (s *StepCA) Logs() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "step-ca.log"))
	return string(b)
}

// WaitLog waits until step-ca's log contains sub.
func (s *StepCA) WaitLog(ctx context.Context, sub string) error {
	for !strings.Contains(s.Logs(), sub) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("step-ca never logged %q", sub)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}
