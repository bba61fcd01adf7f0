// Package guestproto holds what bunkerguest, inside a guest, and the
// pipeline, outside it, agree on.
package guestproto

// ReadyLine is the console line "bunkerguest ready" prints: the guest's
// signal that it has booted, which a recipe's "booted: guest-signal: true"
// waits for. bunkerguest uinit prints it after the guest's facts.
const ReadyLine = "BUNKERGUEST-READY"

// CountParam, on the kernel command line as CountParam=FILE, makes
// bunkerguest uinit start a process that counts up ten times a second into
// FILE: a process whose progress shows across a snapshot.
const CountParam = "bunkerguest.count"
