//go:build !linux

package transport

import (
	"errors"
	"os"
)

var errUnsupportedOS = errors.New("transport: drive passthrough is implemented for Linux only")

const cnsController = 0x01

func nvmeIdentify(*os.File, uint32, uint32) ([]byte, error)    { return nil, errUnsupportedOS }
func nvmeNSIDFromPath(string) uint32                           { return 0 }
func scsiInquiry(*os.File) (Inquiry, error)                    { return Inquiry{}, errUnsupportedOS }
func nvmeSecurity(*os.File, bool, uint8, uint16, []byte) error { return errUnsupportedOS }
func ataTrusted(*os.File, bool, uint8, uint16, []byte) error   { return errUnsupportedOS }
func scsiSecurity(*os.File, bool, uint8, uint16, []byte) error { return errUnsupportedOS }
func nvmeIdentity(*os.File, uint32) (Identity, error)          { return Identity{}, errUnsupportedOS }
func sataIdentity(*os.File) (Identity, error)                  { return Identity{}, errUnsupportedOS }
func scsiIdentity(*os.File) (Identity, error)                  { return Identity{}, errUnsupportedOS }
