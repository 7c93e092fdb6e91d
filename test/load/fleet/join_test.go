package fleet

import "testing"

func testJoin(t *testing.T) {}
