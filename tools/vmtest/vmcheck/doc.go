// Package vmcheck holds the tests that prove the vmtest VM is what the rest
// of the suite assumes: BPF LSM active and usable, the pseudo filesystems
// mounted, testdata and kernel modules present. They run in the VM
// (make test-vm) and skip with a reason on the development machine.
package vmcheck
