package peercred

// SetNoPIDFD makes l behave as on a kernel without SO_PEERPIDFD (and without pidfd_open), for
// the tests of the fallbacks, which live in package peercred_test so that they may use
// internal/proctest (which imports this package).
func SetNoPIDFD(l *Listener, noPeerPIDFD, noPidfdOpen bool) {
	l.noPeerPIDFD, l.noPidfdOpen = noPeerPIDFD, noPidfdOpen
}
