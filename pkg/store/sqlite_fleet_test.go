package store_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/svidd/svidd/pkg/store"
)

// TestSQLiteFleetKeys: the fleet's JWT keys and the served sequence survive a reopen; an
// update with Reset replaces every key; Delete removes one.
func TestSQLiteFleetKeys(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "svidd.db")
	s, err := store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	keys, st, err := s.FleetKeys(ctx)
	if err != nil || len(keys) != 0 || st.Revision != 0 || st.Sequence != 0 {
		t.Fatalf("fresh store: %v %+v %v", keys, st, err)
	}
	na := time.Unix(1900000000, 0).UTC()
	if err := s.UpdateFleetKeys(ctx, store.FleetKeysUpdate{Put: []store.FleetKey{
		{Name: "a/jwtkeys/1", Record: []byte(`{"x":1}`), NotAfter: na},
		{Name: "b/jwtkeys/2", Record: []byte(`{"x":2}`), NotAfter: na},
	}, Revision: 7}); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateFleetKeys(ctx, store.FleetKeysUpdate{Delete: []string{"a/jwtkeys/1"}, Revision: 9}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetFleetSequence(ctx, 9<<16, []byte{1, 2}); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateFleetKeys(ctx, store.FleetKeysUpdate{Put: []store.FleetKey{{Name: "", Record: []byte("x")}}}); err == nil {
		t.Fatal("a key without a name was stored")
	}
	s.Close()

	s, err = store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	keys, st, err = s.FleetKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0].Name != "b/jwtkeys/2" || string(keys[0].Record) != `{"x":2}` || !keys[0].NotAfter.Equal(na) {
		t.Fatalf("keys after reopen = %+v", keys)
	}
	if st.Revision != 9 || st.Sequence != 9<<16 || string(st.Fingerprint) != "\x01\x02" {
		t.Fatalf("state after reopen = %+v", st)
	}
	if err := s.UpdateFleetKeys(ctx, store.FleetKeysUpdate{Reset: true, Put: []store.FleetKey{{Name: "c/jwtkeys/3", Record: []byte("{}"), NotAfter: na}}}); err != nil {
		t.Fatal(err)
	}
	if keys, _, _ := s.FleetKeys(ctx); len(keys) != 1 || keys[0].Name != "c/jwtkeys/3" {
		t.Fatalf("keys after reset = %+v", keys)
	}
}
