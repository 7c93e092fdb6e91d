// Package svidfiles delivers SVIDs as files, for processes that cannot use SDS or the Workload
// API, and for Envoy's own bootstrap: the connection that secures Envoy's xDS stream cannot
// fetch its certificate over that stream.
//
// # Layout
//
// A Writer owns one directory DIR:
//
//	DIR/current -> .gen-20260102T150405.123456789Z-000001   (symlink, swapped atomically)
//	DIR/.gen-20260102T150405.123456789Z-000001/svid.pem         chain, leaf first (0644)
//	DIR/.gen-20260102T150405.123456789Z-000001/svid_key.pem     PKCS#8 key (0600)
//	DIR/.gen-20260102T150405.123456789Z-000001/bundle.pem       own + federated roots (0644)
//	DIR/.gen-20260102T150405.123456789Z-000001/jwt_svid.token   optional
//	DIR/.gen-20260102T150405.123456789Z-000001/jwt_bundle.json  optional
//	DIR/tls_certificate_sds_secret.yaml      Envoy SDS resource naming DIR/current/svid*.pem
//	DIR/validation_context_sds_secret.yaml   Envoy SDS resource naming DIR/current/bundle.pem
//
// Every Write fills a fresh generation directory, fsyncs it, and only then renames a new
// symlink over DIR/current (rename(2) is atomic), so DIR/current always names a complete
// generation whose key matches its certificate. Older generations are removed after the swap,
// keeping Config.Keep of them so a reader that resolved current just before a swap can finish.
// Modes are set with chmod after creating each file: the umask of whoever runs the writer does
// not loosen (or tighten) them.
//
// # Reading
//
// Readers must resolve current once: open DIR/current as a directory, then read every file
// relative to that open directory (openat). Reading DIR/current/svid.pem and then
// DIR/current/svid_key.pem by path can straddle a swap and pair a new certificate with an old
// key. ReadCurrent does it right; use it, or do the same.
//
// Envoy does it right too: the SDS resource files set watched_directory to DIR, so Envoy
// reloads when current is renamed into DIR, and it re-reads the certificate and key until their
// hashes are stable. Point Envoy's sds_config at the resource files with path_config_source
// (see examples/envoy-files).
//
// A lock file (DIR/.lock, flock(2)) serialises writers, so two `svidctl svid watch` on one
// directory cannot delete each other's fresh generation.
package svidfiles
