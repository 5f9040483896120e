package opalsim

import (
	"errors"
	"sync"
	"testing"

	"github.com/sedboot/sedboot/internal/blockdev"
)

// TestConcurrentIOAndSecurity runs block I/O while another goroutine locks
// and unlocks the global range over the wire (run with -race).
func TestConcurrentIOAndSecurity(t *testing.T) {
	d, w := newWireDrive(t)
	sid := []byte("owner")
	kernelOwnAndActivate(t, w, sid)
	admin1 := authAdminN(1)
	must(t, "admin1", w.startSession(spLocking, &admin1, sid))
	_, st := w.method(lockingRangeUID(0), mSet, setValues(col(5, u(1)), col(6, u(1))))
	must(t, "enable locking", st)
	w.endSession()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := 0; g < 3; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			buf := make([]byte, 4096)
			for i := 0; i < 200; i++ {
				var err error
				if i%2 == 0 {
					err = d.WriteBlocks(uint64(g*8), buf)
				} else {
					err = d.ReadBlocks(uint64(g*8), buf)
				}
				if err != nil && !errors.Is(err, blockdev.ErrLocked) {
					errs <- err
					return
				}
			}
		}(g)
	}
	for i := 0; i < 20; i++ {
		must(t, "admin1", w.startSession(spLocking, &admin1, sid))
		_, st := w.method(lockingRangeUID(0), mSet, setValues(col(7, u(uint64(i%2))), col(8, u(uint64(i%2)))))
		must(t, "lock/unlock", st)
		w.endSession()
		_ = d.Status()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
