package sedsim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// The control interface is HTTP with JSON bodies on a unix socket in the
// state directory (mode 0600), so only this machine's owner of the state
// directory reaches it:
//
//	GET  /drives                  []DriveInfo
//	POST /power-cycle?drive=K     power-cycle drive K (drive=all: every drive)
//	GET  /psid?drive=K            {"psid": "..."}: the drive's label
//
// Errors are {"error": "..."} with a 4xx or 5xx status.

func (s *Sim) startControl() error {
	path := filepath.Join(s.opts.StateDir, ControlSocketName)
	if len(path) >= 104 {
		return fmt.Errorf("sedsim: control socket path %s is too long for a unix socket (%d bytes): use a shorter state directory", path, len(path))
	}
	_ = os.Remove(path) // stale socket of a simulator that died (we hold the state lock)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("sedsim: control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("sedsim: control socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /drives", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.List())
	})
	mux.HandleFunc("POST /power-cycle", func(w http.ResponseWriter, r *http.Request) {
		sel := r.URL.Query().Get("drive")
		var err error
		if sel == "all" {
			err = s.PowerCycleAll(r.Context())
		} else {
			k, perr := s.driveParam(sel)
			if perr != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": perr.Error()})
				return
			}
			err = s.PowerCycle(r.Context(), k)
		}
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"result": "power-cycled"})
	})
	mux.HandleFunc("GET /psid", func(w http.ResponseWriter, r *http.Request) {
		k, err := s.driveParam(r.URL.Query().Get("drive"))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		psid := s.drives[k].PSID()
		writeJSON(w, http.StatusOK, map[string]string{"psid": string(psid)})
		clear(psid)
	})
	s.ctlLn = ln
	s.ctl = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.ctl.Serve(ln) }()
	return nil
}

func (s *Sim) driveParam(v string) (int, error) {
	if v == "" {
		return 0, errors.New("no drive given")
	}
	k, err := strconv.Atoi(v)
	if err != nil || k < 0 || k >= len(s.drives) {
		return 0, fmt.Errorf("drive %q: want 0 to %d or all", v, len(s.drives)-1)
	}
	return k, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Client talks to a running simulator's control socket.
type Client struct {
	stateDir string
	hc       *http.Client
}

// NewClient returns a client for the simulator serving stateDir.
func NewClient(stateDir string) *Client {
	path := filepath.Join(stateDir, ControlSocketName)
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}
	return &Client{stateDir: stateDir, hc: &http.Client{Transport: tr, Timeout: 2 * time.Minute}}
}

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://sedsim"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("no sedsim serving %s (control socket %s): %w", c.stateDir, filepath.Join(c.stateDir, ControlSocketName), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("sedsim control: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("sedsim control: %s", resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("sedsim control: bad answer: %w", err)
		}
	}
	return nil
}

// List returns the simulator's drives.
func (c *Client) List(ctx context.Context) ([]DriveInfo, error) {
	var out []DriveInfo
	return out, c.do(ctx, http.MethodGet, "/drives", &out)
}

// PowerCycle power-cycles drive k, or every drive when k < 0.
func (c *Client) PowerCycle(ctx context.Context, k int) error {
	sel := "all"
	if k >= 0 {
		sel = strconv.Itoa(k)
	}
	return c.do(ctx, http.MethodPost, "/power-cycle?drive="+sel, nil)
}

// PSID returns drive k's PSID as printed on its label.
func (c *Client) PSID(ctx context.Context, k int) (string, error) {
	var out struct {
		PSID string `json:"psid"`
	}
	err := c.do(ctx, http.MethodGet, "/psid?drive="+strconv.Itoa(k), &out)
	return out.PSID, err
}
