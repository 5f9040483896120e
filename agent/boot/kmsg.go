package boot

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"sync"
)

// KmsgHandler is a slog.Handler that writes each record as one line of the
// kernel log (/dev/kmsg), tagged "sedboot:" with the record's level mapped
// to a syslog priority, so that the real OS's journal keeps the boot's
// events. Records above MaxLen bytes are cut.
type KmsgHandler struct {
	mu    *sync.Mutex
	w     io.Writer
	level slog.Leveler
	text  slog.Handler
	buf   *bytes.Buffer
}

// MaxLen is the longest kernel log line written (the kernel's limit is
// about 1 KiB per record).
const MaxLen = 960

// NewKmsgHandler returns a handler writing to w (normally /dev/kmsg opened
// for writing) records at level and above.
func NewKmsgHandler(w io.Writer, level slog.Leveler) *KmsgHandler {
	buf := &bytes.Buffer{}
	return &KmsgHandler{
		mu:    &sync.Mutex{},
		w:     w,
		level: level,
		buf:   buf,
		text: slog.NewTextHandler(buf, &slog.HandlerOptions{Level: level, ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey) {
				return slog.Attr{}
			}
			return a
		}}),
	}
}

// Enabled implements slog.Handler.
func (h *KmsgHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level.Level() }

// Handle implements slog.Handler.
func (h *KmsgHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf.Reset()
	if err := h.text.Handle(ctx, r); err != nil {
		return err
	}
	prio := "<6>" // info
	switch {
	case r.Level >= slog.LevelError:
		prio = "<3>"
	case r.Level >= slog.LevelWarn:
		prio = "<4>"
	case r.Level < slog.LevelInfo:
		prio = "<7>"
	}
	line := bytes.TrimRight(h.buf.Bytes(), "\n")
	line = bytes.ReplaceAll(line, []byte("\n"), []byte(" "))
	out := append([]byte(prio+"sedboot: "), line...)
	if len(out) > MaxLen {
		out = out[:MaxLen]
	}
	_, err := h.w.Write(out)
	return err
}

// WithAttrs implements slog.Handler.
func (h *KmsgHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.text = h.text.WithAttrs(attrs)
	return &c
}

// WithGroup implements slog.Handler.
func (h *KmsgHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.text = h.text.WithGroup(name)
	return &c
}
