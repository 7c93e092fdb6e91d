#!/bin/sh
# Builds the test etcd server (this directory's module) into a cache outside the repository,
# keyed by the etcd version pinned in go.mod, and prints the binary's path. Does nothing but
# print when that version is already built, so `make test` and internal/etcdtest can call it
# every time. Concurrent callers (parallel test packages) wait on a lock instead of building
# twice.
set -eu
cd "$(dirname "$0")"
version=$(sed -n 's/^require go\.etcd\.io\/etcd\/server\/v3 \(v[^ ]*\).*/\1/p' go.mod)
[ -n "$version" ] || { echo "build.sh: no go.etcd.io/etcd/server/v3 version in go.mod" >&2; exit 1; }
dir="${XDG_CACHE_HOME:-$HOME/.cache}/svidd-tools/etcd-$version"
bin="$dir/etcd"
if [ ! -x "$bin" ]; then
	mkdir -p "$dir"
	exec 9>"$dir/.lock"
	flock 9
	if [ ! -x "$bin" ]; then
		echo "build.sh: building etcd $version into $dir (once per version)" >&2
		# Built in place then renamed: a half-written binary is never found at $bin.
		CGO_ENABLED=0 go build -trimpath -o "$bin.tmp" .
		mv -f "$bin.tmp" "$bin"
	fi
fi
echo "$bin"
