// Package conf loads svidd's HCL configuration: the file schema, the defaults, and the
// validation that turns a file (plus command-line overrides) into a typed Config.
//
// Every problem is an hcl.Diagnostic with the file:line:col of the attribute at fault, so an
// operator sees all mistakes at once and where they are, not only the first one. Problems in
// a command-line override name the flag instead of a position.
//
// Precedence: flags (Overrides) beat the file, the file beats Default().
package conf
