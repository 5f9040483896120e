package opalsim

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

func keyHash(b []byte) []byte {
	h := sha256.Sum256(b)
	return h[:]
}

// writeAtomic replaces dir/name with data so that a crash at any moment
// leaves either the old or the new file: temp file, fsync, rename, fsync dir.
func writeAtomic(dir, name string, data []byte) error {
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmpName, filepath.Join(dir, name)); err != nil {
		return err
	}
	ok = true
	df, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer df.Close()
	return df.Sync()
}

// save persists the state (no-op for in-memory drives).
func (d *Drive) save() error {
	if d.dir == "" {
		return nil
	}
	b, err := json.Marshal(d.st)
	if err != nil {
		return fmt.Errorf("encode drive state: %w", err)
	}
	if err := writeAtomic(d.dir, stateFile, b); err != nil {
		return fmt.Errorf("save drive state in %s: %w", d.dir, err)
	}
	return nil
}

func loadState(dir string) (*state, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, err
	}
	st := &state{}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("decode %s: %w", stateFile, err)
	}
	if err := st.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", stateFile, err)
	}
	return st, nil
}

func (st *state) validate() error {
	switch {
	case st.Version != 1:
		return fmt.Errorf("unsupported state version %d", st.Version)
	case st.BlockSize < 512 || st.Blocks == 0:
		return errors.New("bad geometry")
	case len(st.SystemKey) != 32:
		return errors.New("bad system key")
	case st.MBRSize%tablePage != 0 || st.DSSize%tablePage != 0 || st.MBRSize < 0 || st.DSSize < 0:
		return errors.New("bad byte table sizes")
	case int64(len(st.MBRMap)) != (st.MBRSize/tablePage+7)/8 || int64(len(st.DSMap)) != (st.DSSize/tablePage+7)/8:
		return errors.New("bad byte table maps")
	case st.MaxSess <= 0:
		return errors.New("bad session limit")
	}
	ls := &st.Locking
	if ls.LifeCycle != lifeManufactured && ls.LifeCycle != lifeManufacturedInactive {
		return fmt.Errorf("bad Locking SP life cycle %d", ls.LifeCycle)
	}
	if ls.ACE == nil {
		ls.ACE = map[UID][]exprElem{}
	}
	if ls.LAK == nil {
		ls.LAK = map[string][]byte{}
	}
	if ls.UK == nil {
		ls.UK = map[string][]byte{}
	}
	for r := range ls.Ranges {
		if ls.Ranges[r].Wrapped == nil {
			ls.Ranges[r].Wrapped = map[string][]byte{}
		}
	}
	return nil
}

func readLabel(dir string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(dir, labelFile))
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSpace(b)
	p, ok := bytes.CutPrefix(b, []byte("PSID: "))
	if !ok || len(p) == 0 {
		return nil, fmt.Errorf("%s: no PSID line", labelFile)
	}
	return p, nil
}
