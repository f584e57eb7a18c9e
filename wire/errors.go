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
)

// String names the code for messages.
func (c Code) String() string {
	switch c {
	case CodeInternal:
		return "internal"
	case CodeBadFrame:
		return "bad frame"
	case CodeOversize:
		return "oversize"
	case CodeShape:
		return "shape"
	case CodeNonFinite:
		return "non-finite"
	case CodeRange:
		return "range"
	case CodeBusy:
		return "busy"
	case CodeTimeout:
		return "timeout"
	case CodeDownstream:
		return "downstream"
	case CodeWrongStage:
		return "wrong stage"
	}
	return fmt.Sprintf("code(%d)", uint16(c))
}

// ErrBusy, ErrTimeout, ErrDownstream and ErrWrongStage are the sentinels of the
// state codes, so that a RemoteError matches them with errors.Is.
var (
	ErrBusy       = errors.New("wire: peer busy")
	ErrTimeout    = errors.New("wire: timeout")
	ErrDownstream = errors.New("wire: downstream failed")
	ErrWrongStage = errors.New("wire: wrong stage")
	ErrInternal   = errors.New("wire: internal error")
)

var codeErr = map[Code][]error{
	CodeInternal:   {ErrInternal},
	CodeBadFrame:   {ErrTruncated, ErrMagic, ErrVersion, ErrHeader, ErrChecksum, ErrPayload},
	CodeOversize:   {ErrOversize},
	CodeShape:      {ErrShape, ErrUnexpect},
	CodeNonFinite:  {ErrNonFinite},
	CodeRange:      {ErrRange},
	CodeBusy:       {ErrBusy},
	CodeTimeout:    {ErrTimeout},
	CodeDownstream: {ErrDownstream},
	CodeWrongStage: {ErrWrongStage},
}

// CodeOf maps a local error to the code an error frame reports it with.
func CodeOf(err error) Code {
	var re *RemoteError
	if errors.As(err, &re) && re.Code == CodeDownstream {
		return CodeDownstream
	}
	for _, c := range []Code{CodeBadFrame, CodeOversize, CodeShape, CodeNonFinite, CodeRange, CodeBusy, CodeTimeout, CodeDownstream, CodeWrongStage} {
		for _, s := range codeErr[c] {
			if errors.Is(err, s) {
				return c
			}
		}
	}
	switch {
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
	for _, s := range codeErr[e.Code] {
		if s == target {
			return true
		}
	}
	return false
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
