package kernel

// The boot kernel is pinned here, and only here. Debian's security archive
// keeps only the newest build of each kernel series, so this package disappears
// when Debian publishes the next 6.12 update; Ensure then says so and how to
// move the pin.
const (
	// Package is the Debian binary package that carries the kernel.
	Package = "linux-image-6.12.107+deb12-cloud-amd64"
	// Version is the kernel release (uname -r) of Package, which names
	// /boot/vmlinuz-<Version> and /lib/modules/<Version> inside it.
	Version = "6.12.107+deb12-cloud-amd64"
)
