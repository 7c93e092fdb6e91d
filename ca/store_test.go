package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestPersistence(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "data")
	clk := &fakeClock{t: t0}
	c := newTestCA(t, dir, clk)

	for path, want := range map[string]os.FileMode{dir: 0o700, c.Path(): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %04o, want %04o", path, fi.Mode().Perm(), want)
		}
	}

	reopen := func(t *testing.T) {
		t.Helper()
		before := c.Bundle()
		again := newTestCA(t, dir, clk)
		after := again.Bundle()
		if !bytes.Equal(before.PEM, after.PEM) || !bytes.Equal(before.DER, after.DER) || before.Sequence != after.Sequence ||
			after.TrustDomain != td {
			t.Fatalf("reloaded bundle differs: seq %d vs %d", before.Sequence, after.Sequence)
		}
		if !slices.EqualFunc(c.Authorities(), again.Authorities(), func(a, b AuthorityInfo) bool {
			return a.State == b.State && a.SKI == b.SKI && a.NotAfter.Equal(b.NotAfter)
		}) {
			t.Fatalf("reloaded authorities differ:\n%+v\n%+v", c.Authorities(), again.Authorities())
		}
		// The reloaded key signs SVIDs that verify against the original bundle.
		svid, err := again.MintX509SVID(wlID, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		verify(t, svid, before, clk.Now())
	}
	t.Run("fresh", reopen)
	t.Run("prepared", func(t *testing.T) {
		clk.Set(t0.Add(3 * time.Hour))
		if changed, err := c.Rotate(clk.Now()); err != nil || !changed {
			t.Fatalf("Rotate: %v %v", changed, err)
		}
		reopen(t)
	})
	t.Run("activated", func(t *testing.T) {
		clk.Set(t0.Add(5 * time.Hour))
		if changed, err := c.Rotate(clk.Now()); err != nil || !changed {
			t.Fatalf("Rotate: %v %v", changed, err)
		}
		reopen(t)
	})

	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != StateFileName {
		t.Fatalf("data dir holds %v, want only %s (no temp files left)", entries, StateFileName)
	}
	// The old authority's key is not kept: it never signs again.
	var st fileState
	data, _ := os.ReadFile(c.Path())
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	for _, a := range st.Authorities {
		if (a.State == StateOld) != (a.PrivateKey == "") {
			t.Errorf("%s authority has key %v", a.State, a.PrivateKey != "")
		}
	}
}

// TestLoadRefusesBadState: a damaged or foreign state file is never replaced; New fails with
// an error naming the file and leaves it byte-for-byte as it was.
func TestLoadRefusesBadState(t *testing.T) {
	clk := &fakeClock{t: t0}
	// A valid state to tamper with, with an active and a prepared authority.
	goodDir := t.TempDir()
	good := newTestCA(t, goodDir, clk)
	if _, err := good.Rotate(t0.Add(3 * time.Hour)); err != nil {
		t.Fatal(err)
	}
	goodData, err := os.ReadFile(good.Path())
	if err != nil {
		t.Fatal(err)
	}
	otherTD := spiffeid.RequireTrustDomainFromString("other.org")
	otherDir := t.TempDir()
	newTestCA(t, otherDir, clk, func(c *Config) { c.TrustDomain = otherTD })
	otherData, err := os.ReadFile(filepath.Join(otherDir, StateFileName))
	if err != nil {
		t.Fatal(err)
	}

	edit := func(data []byte, f func(*fileState)) []byte {
		var st fileState
		if err := json.Unmarshal(data, &st); err != nil {
			t.Fatal(err)
		}
		f(&st)
		out, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	kder, _ := x509.MarshalPKCS8PrivateKey(k)
	strangerKey := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))

	tests := []struct {
		name string
		data []byte
		mode os.FileMode
		want string
	}{
		{"bad JSON", []byte(`{"version": 1, "trust_domain": `), 0o600, "decoding JSON"},
		{"empty file", nil, 0o600, "decoding JSON"},
		{"unknown field", edit(goodData, func(*fileState) {}), 0o600, ""}, // replaced below
		{"mismatched key", edit(goodData, func(st *fileState) {
			for i := range st.Authorities {
				if st.Authorities[i].State == StateActive {
					st.Authorities[i].PrivateKey = strangerKey
				}
			}
		}), 0o600, "private key does not match the certificate"},
		{"mismatched prepared key", edit(goodData, func(st *fileState) {
			for i := range st.Authorities {
				if st.Authorities[i].State == StatePrepared {
					st.Authorities[i].PrivateKey = strangerKey
				}
			}
		}), 0o600, "private key does not match the certificate"},
		{"other trust domain", otherData, 0o600, `belongs to trust domain "other.org"`},
		{"other trust domain's certificate", edit(otherData, func(st *fileState) { st.TrustDomain = "example.org" }), 0o600,
			`not a CA for trust domain "example.org"`},
		{"tampered certificate", edit(goodData, func(st *fileState) {
			b, _ := pem.Decode([]byte(st.Authorities[0].Certificate))
			b.Bytes[len(b.Bytes)-5] ^= 0xff // inside the signature
			st.Authorities[0].Certificate = string(pem.EncodeToMemory(b))
		}), 0o600, "authority 0"},
		{"no active", edit(goodData, func(st *fileState) {
			for i := range st.Authorities {
				st.Authorities[i].State = StatePrepared
			}
		}), 0o600, "0 active authorities"},
		{"missing key", edit(goodData, func(st *fileState) {
			for i := range st.Authorities {
				st.Authorities[i].PrivateKey = ""
			}
		}), 0o600, "has no private key"},
		{"unknown version", edit(goodData, func(st *fileState) { st.Version = 2 }), 0o600, "unsupported version 2"},
		{"mismatched JWT key", edit(goodData, func(st *fileState) { st.Authorities[1].JWTPrivateKey = strangerKey }), 0o600,
			"authority 1: JWT private key does not match the JWT public key"},
		{"missing JWT private key", edit(goodData, func(st *fileState) { st.Authorities[0].JWTPrivateKey = "" }), 0o600,
			"active authority has no JWT private key"},
		{"JWT key without ID", edit(goodData, func(st *fileState) { st.Authorities[0].JWTKeyID = "" }), 0o600, "JWT key without a key ID"},
		{"JWT key ID with a space", edit(goodData, func(st *fileState) { st.Authorities[0].JWTKeyID = "a b" }), 0o600, `JWT key ID "a b"`},
		{"JWT public key missing", edit(goodData, func(st *fileState) { st.Authorities[0].JWTPublicKey = "" }), 0o600, "JWT key has no public key"},
		{"JWT public key not PEM", edit(goodData, func(st *fileState) { st.Authorities[0].JWTPublicKey = "x" }), 0o600, "JWT public key: no PEM block"},
		{"duplicate JWT key ID", edit(goodData, func(st *fileState) {
			st.Authorities[1].JWTKeyID = st.Authorities[0].JWTKeyID
		}), 0o600, "authorities 0 and 1 have the same JWT key ID"},
		{"group writable", goodData, 0o620, "has mode 0620"},
		{"world writable", goodData, 0o602, "has mode 0602"},
		{"world readable", goodData, 0o604, "has mode 0604"},
	}
	tests[2].data = bytes.Replace(goodData, []byte(`"version"`), []byte(`"extra": true, "version"`), 1)
	tests[2].want = `unknown field "extra"`

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, StateFileName)
			if err := os.WriteFile(path, tt.data, tt.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil { // umask-proof
				t.Fatal(err)
			}
			c, err := New(Config{TrustDomain: td, Dir: dir, CATTL: testCA, Clock: clk.Now})
			mustContain(t, err, path, tt.want)
			if c != nil {
				t.Fatal("got a CA with the error")
			}
			after, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			fi, _ := os.Stat(path)
			if !bytes.Equal(after, tt.data) || fi.Mode().Perm() != tt.mode {
				t.Fatalf("state file was modified")
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Fatalf("dir holds %d entries", len(entries))
			}
		})
	}
}

func TestLoadRefusesOtherOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test chowns a file and must run as root (as CI does)")
	}
	dir := t.TempDir()
	clk := &fakeClock{t: t0}
	c := newTestCA(t, dir, clk)
	if err := os.Chown(c.Path(), 1001, 1001); err != nil {
		t.Fatal(err)
	}
	_, err := New(Config{TrustDomain: td, Dir: dir, CATTL: testCA, Clock: clk.Now})
	mustContain(t, err, c.Path(), "owned by uid 1001")
}

func TestLoadRefusesNonRegularFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, StateFileName), 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := New(Config{TrustDomain: td, Dir: dir, Clock: (&fakeClock{t: t0}).Now})
	mustContain(t, err, "not a regular file")
}

// TestFailedWriteChangesNothing: a transition whose write fails does not take effect.
func TestFailedWriteChangesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	clk := &fakeClock{t: t0}
	c := newTestCA(t, dir, clk)
	before := c.Bundle()
	ch := c.BundleChanged()
	if err := os.RemoveAll(dir); err != nil { // even root cannot create a temp file in a missing dir
		t.Fatal(err)
	}
	changed, err := c.Rotate(t0.Add(3 * time.Hour))
	if err == nil || changed {
		t.Fatalf("Rotate: changed %v err %v", changed, err)
	}
	if !strings.Contains(err.Error(), filepath.Join(dir, StateFileName)) {
		t.Fatalf("error %q does not name the file", err)
	}
	if c.Bundle() != before || len(c.Authorities()) != 1 {
		t.Fatal("state changed despite the failed write")
	}
	select {
	case <-ch:
		t.Fatal("BundleChanged fired")
	default:
	}
	if err := c.Prepare(); err == nil {
		t.Fatal("Prepare succeeded without a data dir")
	}
}
