// Package ca is svidd's in-process certificate authority: it generates and persists the trust
// domain's self-signed root, mints X509-SVIDs that follow the SPIFFE X509-SVID spec, and
// rotates the root with overlap so that a workload always holds a bundle that verifies every
// SVID it may be shown.
//
// Each authority also holds a JWT-SVID signing key (same key type, random kid) that rotates
// with it: published when the authority is prepared, signing while it is active, kept (public
// part only) until the authority expires. The bundle carries these keys as JWTAuthorities and
// as a SPIFFE bundle document (JWKS). A state file written before JWT keys existed is given
// keys for its active and prepared authorities on load.
//
// Rotation is a pure function of the authorities' validity periods (nextStep, nextDue): the
// next CA is prepared and published in the bundle at half the active CA's life, activated when
// a sixth of it is left, and the old one stays in the bundle until it expires. Because the
// successor's own half life falls when its predecessor expires, the bundle normally holds two
// CAs. After a downtime longer than that schedule, every step that fell due is applied at
// once on start (an expired CA with no successor is replaced by a fresh one), so the overlap
// before a new CA signs can then be shorter than a third of the life.
//
// Every transition is written to Dir/ca.json (JSON, PEM certificates and PKCS#8 keys, 0600,
// atomic rename) before it takes effect, so a restart at any moment resumes where it was.
// Old authorities are kept without their keys. A file that fails any check is never replaced.
//
// Minting reads the active signer from an atomically swapped snapshot and generates and signs
// outside any lock, so a rotation's disk write never delays it.
package ca
