#!/bin/sh
# Builds smallstep's step-ca at a pinned version from the Go module proxy into a cache outside
# the repository, keyed by version, so only the first run on a machine pays for the build
# (about 7 minutes and 840 MB of module downloads cold). Prints the binary's path.
# The upstream e2e tests (test/upstream_*_test.go) run it; `make tools` and `make test` call
# this script so a fresh CI machine has it.
set -eu
VERSION="${STEPCA_VERSION:-v0.30.2}"
CACHE="${SVIDD_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/svidd-tools}"
DIR="$CACHE/step-ca-$VERSION"
BIN="$DIR/step-ca"
if [ -x "$BIN" ]; then
	echo "$BIN"
	exit 0
fi
mkdir -p "$DIR"
# Build into a temporary directory and rename, so a build killed half-way never leaves a
# truncated binary behind that the check above would take for a good one.
TMP="$(mktemp -d "$DIR/build.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
echo "building step-ca $VERSION into $DIR (first run only)" >&2
CGO_ENABLED=0 GOBIN="$TMP" GOFLAGS=-mod=mod go install "github.com/smallstep/certificates/cmd/step-ca@$VERSION" >&2
mv "$TMP/step-ca" "$BIN"
echo "$BIN"
