// Package fabrictest holds the QEMU boot test and benchmarks of software
// SEDs reached over NVMe/TCP (issue 3): a guest whose small Go /init
// (testdata/sedguest) connects simulated SEDs served by sedsim in the test
// process, runs TCG Level 0 discovery on them through sedboot's transport
// and go-tcg-storage, sees them lock after the host enabled locking and
// power-cycled them, and unlocks one with internal/sed.
//
// The package has no code of its own; see its tests.
package fabrictest
