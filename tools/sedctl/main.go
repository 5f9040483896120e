// Command sedctl administers sedboot on a storage controller: it reports
// drive and key state, tests key servers, enables encryption, rotates,
// backs up and locks keys, and rehearses the boot path. It runs from the
// live OS or from the agent's recovery shell. The program is package
// tools/sedctl/cli; the boot agent's binary carries the same program.
package main

import (
	"os"

	"github.com/sedboot/sedboot/tools/sedctl/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
