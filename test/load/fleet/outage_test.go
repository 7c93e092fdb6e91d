package fleet

import "testing"

func testOutage(t *testing.T) {}
