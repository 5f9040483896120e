// Package kernelflows is a second, independent TCG Opal host: it sends, in
// the same structure, the commands Linux 6.12's block/sed-opal.c sends for
// each IOC_OPAL_* ioctl, and parses the answers the way that file does.
//
// It exists to hold the simulated TPer in opalsim (and, through the QEMU
// rig, real kernels) to the behaviour of the kernel host, which differs from
// go-tcg-storage in ways a TPer must tolerate:
//
//   - every command and response travels in a fixed 2048-byte buffer
//     (IO_BUFFER_LENGTH); the whole buffer is sent, zero-padded after the
//     ComPacket, and every receive asks for 2048 bytes;
//   - sessions are opened with host session number 0x41 and the
//     credential (HostChallenge) and authority (HostSigningAuthority) inside
//     StartSession; no Properties call, no Authenticate method;
//   - every command ends with the tokens cmd_finalize appends (end of the
//     parameter list, end of data, an empty status list), even the
//     end-of-session command;
//   - responses are parsed into at most 64 tokens, status taken from the
//     last five, integers only from tiny and short atoms;
//   - generic table reads move at most 1981 bytes per Get (OPAL_MAX_READ_TABLE)
//     and writes fill the rest of the 2048-byte buffer.
//
// The exported methods are named after the ioctls. Each returns nil on
// success, a *StatusError carrying the Opal method status the kernel
// returns as a positive ioctl result, or an error wrapping the
// syscall.Errno the kernel returns as a negative one; Code recovers the
// kernel's integer result from any of them.
//
// The host was written from the kernel's algorithm and the TCG Storage
// Architecture Core and Opal SSC specifications; it shares no code with
// go-tcg-storage or the simulator.
package kernelflows
