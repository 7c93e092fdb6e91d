// Command etcd is a real etcd server built from the etcd server module, for the tests of the
// etcd registry (internal/etcdtest starts it). It lives in its own module so the etcd server's
// dependencies never enter svidd's go.mod or binaries; test/tools/etcd/build.sh builds it into
// a cache outside the repository, keyed by the version pinned in this go.mod.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
