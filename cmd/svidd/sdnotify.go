package main

import (
	"net"
	"os"
)

// sdNotify tells systemd about state changes (Type=notify units): READY=1 once the sockets
// serve, so units ordered after svidd (Envoy) start only when it can answer; RELOADING=1 and
// STOPPING=1 around reloads and stops. Without $NOTIFY_SOCKET it does nothing.
func sdNotify(state string) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return
	}
	if addr[0] == '@' {
		addr = "\x00" + addr[1:] // abstract namespace
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	_, _ = c.Write([]byte(state))
}
