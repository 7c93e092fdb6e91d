package attestor

import (
	"slices"
	"testing"
)

func TestSystemdUnit(t *testing.T) {
	tests := []struct {
		cgroup, want string
	}{
		{"/system.slice/envoy.service", "envoy.service"},
		{"/system.slice/envoy.service/worker", "envoy.service"},
		{"/system.slice/system-getty.slice/getty@tty1.service", "getty@tty1.service"},
		{"/user.slice/user-1000.slice/session-2.scope", "session-2.scope"},
		{"/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service", "user@1000.service"},
		{"/user.slice/user-1000.slice/user@1000.service/envoy.service", "user@1000.service"},
		{"/machine.slice/docker-abc.scope/system.slice/envoy.service", "docker-abc.scope"},
		{"/init.scope", "init.scope"},
		{"/", ""},
		{"", ""},
		{"/custom/envoy.service", ""},
		{"/envoy.service", ""},
		{"/system.slice", ""},
		{"/system.slice/.service", ""},
		{"relative.slice/x.service", ""},
	}
	for _, tt := range tests {
		t.Run(tt.cgroup, func(t *testing.T) {
			if got := systemdUnit(tt.cgroup); got != tt.want {
				t.Fatalf("systemdUnit(%q) = %q; want %q", tt.cgroup, got, tt.want)
			}
		})
	}
}

func TestParseStartTime(t *testing.T) {
	tail := " S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21\n"
	tests := []struct {
		name, stat string
		want       uint64
		wantErr    bool
	}{
		{"plain", "42 (envoy)" + tail, 987654, false},
		{"comm with spaces and parens", "42 (a) b (c) ) d)" + tail, 987654, false},
		{"truncated", "42 (envoy) S 1 2 3", 0, true},
		{"no comm", "42 envoy S", 0, true},
		{"not a number", "42 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 zz 20", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStartTime([]byte(tt.stat))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("parseStartTime = %d, %v; want %d, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name, status string
		want         status
		wantErr      bool
	}{
		{
			"setuid binary: effective ids count",
			"Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t1000\t5\t5\t5\nGroups:\t4 24 1000 \n",
			status{euid: 0, egid: 5, groups: []uint32{4, 24, 1000}}, false,
		},
		{"no groups", "Uid:\t7\t7\t7\t7\nGid:\t8\t8\t8\t8\nGroups:\t\n", status{euid: 7, egid: 8}, false},
		{"no uid line", "Gid:\t8\t8\t8\t8\n", status{}, true},
		{"bad group", "Uid:\t7\t7\t7\t7\nGid:\t8\t8\t8\t8\nGroups:\tx\n", status{}, true},
		{"short uid", "Uid:\t7\nGid:\t8\t8\t8\t8\n", status{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatus([]byte(tt.status))
			if (err != nil) != tt.wantErr {
				t.Fatalf("error %v; want error %v", err, tt.wantErr)
			}
			if err == nil && (got.euid != tt.want.euid || got.egid != tt.want.egid || !slices.Equal(got.groups, tt.want.groups)) {
				t.Fatalf("parseStatus = %+v; want %+v", got, tt.want)
			}
		})
	}
}
