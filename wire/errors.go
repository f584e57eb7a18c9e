package wire

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"unicode/utf8"

	"swarmnode/codec"
)

// Code is the reason an error frame gives; it travels as a uint16.
type Code uint16

// The error codes. Bad-frame codes tell the sender its frame was rejected; the rest
// report the receiver's state.
const (
	CodeInternal   Code = 1 // the receiver failed for its own reasons
	CodeBadFrame   Code = 2 // malformed: truncated, magic, version, header, checksum, payload
	CodeOversize   Code = 3 // over the frame cap
	CodeShape      Code = 4 // wrong shape for the stage, or wrong kind
	CodeNonFinite  Code = 5 // NaN or Inf
	CodeRange      Code = 6 // token id or target outside the vocabulary
	CodeBusy       Code = 7 // too many microbatches in flight; try another holder
	CodeTimeout    Code = 8 // a deadline passed
	CodeDownstream Code = 9 // every holder of the next stage failed
	CodeWrongStage Code = 10
	CodeShared     Code = 11 // a shared-memory payload could not be opened: send on the stream
)

var codeNames = [...]string{
	CodeInternal: "internal", CodeBadFrame: "bad frame", CodeOversize: "oversize", CodeShape: "shape",
	CodeNonFinite: "non-finite", CodeRange: "range", CodeBusy: "busy", CodeTimeout: "timeout",
	CodeDownstream: "downstream", CodeWrongStage: "wrong stage", CodeShared: "shared memory",
}

// String names the code for messages.
func (c Code) String() string { return name(codeNames[:], int(c), "code") }

// name returns names[v], or what(v) where names has none.
func name(names []string, v int, what string) string {
	if v >= 0 && v < len(names) && names[v] != "" {
		return names[v]
	}
	return fmt.Sprintf("%s(%d)", what, v)
}

// codeError is a sentinel error, with the code of the error frame that reports it.
type codeError struct {
	code Code
	msg  string
}

func (e *codeError) Error() string { return e.msg }

func sentinel(code Code, msg string) error { return &codeError{code: code, msg: "wire: " + msg} }

// The sentinel errors. Every error a reader returns for a bad frame wraps one of
// them (test with errors.Is), and so does every error the stage protocol answers
// with, so that CodeOf finds its code.
var (
	ErrTruncated = sentinel(CodeBadFrame, "truncated frame")
	ErrMagic     = sentinel(CodeBadFrame, "not a swarmnode frame")
	ErrVersion   = sentinel(CodeBadFrame, "unsupported frame version")
	ErrHeader    = sentinel(CodeBadFrame, "malformed header")
	ErrChecksum  = sentinel(CodeBadFrame, "checksum mismatch")
	ErrPayload   = sentinel(CodeBadFrame, "bad payload")
	ErrOversize  = sentinel(CodeOversize, "frame too large")
	ErrShape     = sentinel(CodeShape, "wrong shape")
	ErrUnexpect  = sentinel(CodeShape, "unexpected frame kind")
	ErrNonFinite = sentinel(CodeNonFinite, "NaN or Inf value")
	ErrRange     = sentinel(CodeRange, "token id out of range")

	ErrBusy       = sentinel(CodeBusy, "peer busy")
	ErrTimeout    = sentinel(CodeTimeout, "timeout")
	ErrDownstream = sentinel(CodeDownstream, "downstream failed")
	ErrWrongStage = sentinel(CodeWrongStage, "wrong stage")
	// ErrShared means a frame's shared-memory payload could not be opened: the
	// peers do not share /dev/shm, and the sender should use the stream.
	ErrShared   = sentinel(CodeShared, "shared-memory payload unreadable")
	ErrInternal = sentinel(CodeInternal, "internal error")
)

// CodeOf maps a local error to the code an error frame reports it with: a peer's
// error is passed on with its own code.
func CodeOf(err error) Code {
	var re *RemoteError
	var ce *codeError
	switch {
	case errors.As(err, &re) && re.Code >= CodeInternal && re.Code <= CodeShared:
		return re.Code
	case errors.As(err, &ce):
		return ce.code
	case errors.Is(err, codec.ErrNonFinite):
		return CodeNonFinite
	case errors.Is(err, codec.ErrRange):
		return CodeRange
	case errors.Is(err, codec.ErrLength), errors.Is(err, codec.ErrZstd), errors.Is(err, codec.ErrKind), errors.Is(err, codec.ErrBlock):
		return CodeBadFrame
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return CodeTimeout
	}
	return CodeInternal
}

// RemoteError is an error frame received from a peer.
type RemoteError struct {
	Code  Code
	Stage int // the stage of the peer that sent it
	Msg   string
}

// Error says which stage answered with what.
func (e *RemoteError) Error() string {
	return fmt.Sprintf("stage %d peer: %s: %s", e.Stage, e.Code, e.Msg)
}

// Is lets errors.Is(remoteErr, ErrShape) and the like match by code.
func (e *RemoteError) Is(target error) bool {
	ce, ok := target.(*codeError)
	return ok && ce.code == e.Code
}

// MaxErrorMsg caps the message of an error frame.
const MaxErrorMsg = 1024

func errorPayload(code Code, msg string) []byte {
	if len(msg) > MaxErrorMsg {
		msg = msg[:MaxErrorMsg]
	}
	msg = strings.ToValidUTF8(msg, "?")
	b := make([]byte, 2, 2+len(msg))
	binary.LittleEndian.PutUint16(b, uint16(code))
	return append(b, msg...)
}

func parseError(h *Header, p []byte) error {
	if len(p) < 2 || len(p) > 2+MaxErrorMsg {
		return fmt.Errorf("%w: error frame payload of %d bytes", ErrPayload, len(p))
	}
	msg := p[2:]
	if !utf8.Valid(msg) {
		return fmt.Errorf("%w: error message is not UTF-8", ErrPayload)
	}
	return &RemoteError{Code: Code(binary.LittleEndian.Uint16(p)), Stage: h.Stage, Msg: string(msg)}
}
