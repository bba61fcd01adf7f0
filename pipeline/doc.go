// Package pipeline turns a recipe into a signed snapshot artifact, and
// resumes an artifact on the minimal VMM.
//
// A build runs in stages, each reported as a progress line:
//
//	guest    resolve the recipe's kernel and initramfs (the default guest is built or fetched)
//	boot     boot the guest on the full-device VMM in an isolated child process
//	         (its own namespaces, no network, a private directory), wait until the
//	         recipe's booted condition holds and the settle time has passed, pause
//	         every vCPU and capture the machine: the handoff rule refuses legacy
//	         devices that are not quiescent
//	sign     turn the child's capture into one artifact signed with the recipe's key,
//	         written under a temporary name and renamed into place
//
// The child never sees the signing key, and the parent treats what the
// child wrote as untrusted: the boot-time VMM is the part a guest can attack.
package pipeline
