package kernelflows

// Sizes and fixed numbers of the kernel host (block/sed-opal.c,
// block/opal_proto.h).
const (
	// ioBufferLength is the size of every command and response buffer.
	ioBufferLength = 2048
	// maxToks is the size of the kernel's parsed-token table.
	maxToks = 64
	// cmdFinalizeBytes is what cmdFinalize appends before padding.
	cmdFinalizeBytes = 7
	// headerLength is ComPacket (20) + Packet (24) + SubPacket (12).
	headerLength = 56
	// comPacketLength and packetLength locate the nested length fields.
	comPacketLength = 20
	packetLength    = 24
	// d0HeaderLength is the Level 0 discovery header.
	d0HeaderLength = 48
	// maxReadTable is OPAL_MAX_READ_TABLE: 2048 - (56 + 11).
	maxReadTable = 0x7BD

	// hostSessionNumber is GENERIC_HOST_SESSION_NUM.
	hostSessionNumber = 0x41
	// firstTPerSessionNumber is the lowest TSN the kernel accepts.
	firstTPerSessionNumber = 4096

	// discoveryComID is OPAL_DISCOVERY_COMID (Level 0 discovery).
	discoveryComID = 0x0001
	// tcgProtocol1 is TCG_SECP_01, the protocol of every Opal exchange.
	tcgProtocol1 = 1

	// uidLength is OPAL_UID_LENGTH and OPAL_METHOD_LENGTH.
	uidLength = 8
	// maxKeyLength is what struct opal_key's u8 key_len can carry.
	maxKeyLength = 255
	// maxLRs is OPAL_MAX_LRS, the size of opal_lr_act.lr.
	maxLRs = 9

	// recvCheckLimit bounds the kernel's unbounded opal_recv_check loop.
	recvCheckLimit = 64
)

// Token bytes (TCG Core 3.2.2).
const (
	tokStartList   = 0xf0
	tokEndList     = 0xf1
	tokStartName   = 0xf2
	tokEndName     = 0xf3
	tokCall        = 0xf8
	tokEndOfData   = 0xf9
	tokEndOfSess   = 0xfa
	tokEmptyAtom   = 0xff
	tinyAtomMax    = 0x7f
	shortAtomMax   = 0xbf
	mediumAtomMax  = 0xdf
	longAtomMax    = 0xe3
	tinyDataMask   = 0x3f
	tinySigned     = 0x40
	shortAtomID    = 0x80
	shortBytes     = 0x20
	shortSigned    = 0x10
	shortLenMask   = 0x0f
	mediumAtomID   = 0xc0
	mediumBytes    = 0x10
	mediumSigned   = 0x08
	mediumLenMask  = 0x07
	longBytes      = 0x02
	longSigned     = 0x01
	opalTrue       = 0x01
	opalFalse      = 0x00
	booleanOr      = 0x01
	sumSetList     = 0x060000
	keepGlobalKey  = 0x060000
	manufacturedIn = 0x08
)

// Column and cell-block names used by the kernel.
const (
	cellStartRow    = 0x01
	cellEndRow      = 0x02
	cellStartColumn = 0x03
	cellEndColumn   = 0x04
	cellWhere       = 0x00
	cellValues      = 0x01

	colTableRows        = 0x07
	colPIN              = 0x03
	colRangeStart       = 0x03
	colRangeLength      = 0x04
	colReadLockEnabled  = 0x05
	colWriteLockEnabled = 0x06
	colReadLocked       = 0x07
	colWriteLocked      = 0x08
	colActiveKey        = 0x0a
	colLifeCycle        = 0x06
	colMBREnable        = 0x01
	colMBRDone          = 0x02
	colAuthEnabled      = 0x05
	colACEBooleanExpr   = 0x03

	startSessionHostChallenge = 0x00
	startSessionHostSignAuth  = 0x03

	lockingRangeNonGlobal = 0x03
)

// uid is an 8-byte TCG object or method identifier.
type uid [uidLength]byte

// Objects (TCG Core 6.3, Opal SSC 4.2/4.3), as the kernel's opaluid table.
var (
	uidSMU           = uid{0, 0, 0, 0, 0, 0, 0, 0xff}
	uidThisSP        = uid{0, 0, 0, 0, 0, 0, 0, 0x01}
	uidAdminSP       = uid{0, 0, 0x02, 0x05, 0, 0, 0, 0x01}
	uidLockingSP     = uid{0, 0, 0x02, 0x05, 0, 0, 0, 0x02}
	uidAnybody       = uid{0, 0, 0, 0x09, 0, 0, 0, 0x01}
	uidSID           = uid{0, 0, 0, 0x09, 0, 0, 0, 0x06}
	uidAdmin1        = uid{0, 0, 0, 0x09, 0, 0x01, 0, 0x01}
	uidUser1         = uid{0, 0, 0, 0x09, 0, 0x03, 0, 0x01}
	uidPSID          = uid{0, 0, 0, 0x09, 0, 0x01, 0xff, 0x01}
	uidTableTable    = uid{0, 0, 0, 0x01, 0, 0, 0, 0x01}
	uidGlobalRange   = uid{0, 0, 0x08, 0x02, 0, 0, 0, 0x01}
	uidACEStartToKey = uid{0, 0, 0, 0x08, 0, 0x03, 0xd0, 0x01}
	uidACERdLocked   = uid{0, 0, 0, 0x08, 0, 0x03, 0xe0, 0x01}
	uidACEWrLocked   = uid{0, 0, 0, 0x08, 0, 0x03, 0xe8, 0x01}
	uidMBRControl    = uid{0, 0, 0x08, 0x03, 0, 0, 0, 0x01}
	uidMBR           = uid{0, 0, 0x08, 0x04, 0, 0, 0, 0}
	uidDataStore     = uid{0, 0, 0x10, 0x01, 0, 0, 0, 0}
	uidCPINMSID      = uid{0, 0, 0, 0x0b, 0, 0, 0x84, 0x02}
	uidCPINSID       = uid{0, 0, 0, 0x0b, 0, 0, 0, 0x01}
	uidCPINAdmin1    = uid{0, 0, 0, 0x0b, 0, 0x01, 0, 0x01}
	// Half UIDs: only the first four bytes are sent.
	uidHalfAuthorityRef = uid{0, 0, 0x0c, 0x05, 0xff, 0xff, 0xff, 0xff}
	uidHalfBooleanACE   = uid{0, 0, 0x04, 0x0e, 0xff, 0xff, 0xff, 0xff}
)

// Methods (TCG Core 6.3), as the kernel's opalmethod table.
var (
	methodStartSession = uid{0, 0, 0, 0, 0, 0, 0xff, 0x02}
	methodRevert       = uid{0, 0, 0, 0x06, 0, 0, 0x02, 0x02}
	methodActivate     = uid{0, 0, 0, 0x06, 0, 0, 0x02, 0x03}
	methodGenKey       = uid{0, 0, 0, 0x06, 0, 0, 0, 0x10}
	methodRevertSP     = uid{0, 0, 0, 0x06, 0, 0, 0, 0x11}
	methodGet          = uid{0, 0, 0, 0x06, 0, 0, 0, 0x16}
	methodSet          = uid{0, 0, 0, 0x06, 0, 0, 0, 0x17}
	methodErase        = uid{0, 0, 0, 0x06, 0, 0, 0x08, 0x03}
)

// Level 0 discovery feature codes and flag bits.
const (
	featTPer        = 0x0001
	featLocking     = 0x0002
	featGeometry    = 0x0003
	featEnterprise  = 0x0100
	featOpalV100    = 0x0200
	featSingleUser  = 0x0201
	featDataStore   = 0x0202
	featOpalV200    = 0x0203
	featVendorFirst = 0xbfff

	tperSyncSupported = 0x01
	lockingSupported  = 0x01
	lockingEnabled    = 0x02
	lockingLocked     = 0x04
	lockingMBREnabled = 0x10
	lockingMBRDone    = 0x20
)
