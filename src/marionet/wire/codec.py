"""Framing and codec: 4-byte big-endian length, then one msgpack message.

Sans-I/O: ``FrameDecoder.feed(bytes)`` returns decoded messages and raises
``ProtocolError`` on anything malformed, so any transport (asyncio stream,
TLS memory BIO, a controller channel) can drive it and tests need no
network. The length is checked against the maximum *before* the body is
buffered, so an oversized frame costs four bytes, not its claimed size.
"""

from __future__ import annotations

import struct
from typing import Union

import msgspec

from marionet.wire import messages as m

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 4 * 1024 * 1024
#: Room a ``ChData`` envelope needs around the frames it carries (tag,
#: channel id, bin header, flag): a chunk of whole frames at most
#: ``max_frame - CHDATA_OVERHEAD`` long always fits in one frame itself.
CHDATA_OVERHEAD = 64

AnyMessage = Union[m.ALL_MESSAGES]  # type: ignore[valid-type]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyMessage)


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame or message.

    ``code`` is the machine-readable word sent in the ``Bye``.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def encode(msg: m.Message) -> bytes:
    """One message as a complete frame (header + body)."""
    body = _encoder.encode(msg)
    return HEADER.pack(len(body)) + body


def bye_and_close(transport: object, code: str, reason: str) -> None:
    """Tell the peer why with a ``Bye``, then close: a connection is never
    ended without its reason.  A transport already closing is left alone."""
    if transport is None or transport.is_closing():  # type: ignore[attr-defined]
        return
    try:
        transport.write(encode(m.Bye(code=code, reason=reason[:500])))  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - the close below is what matters
        pass
    transport.close()  # type: ignore[attr-defined]


def encode_body(msg: m.Message) -> bytes:
    return _encoder.encode(msg)


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def encode_many(msgs: list[m.Message]) -> bytes:
    """Several frames in one buffer, for one ``write`` call."""
    parts = []
    for msg in msgs:
        body = _encoder.encode(msg)
        parts.append(HEADER.pack(len(body)))
        parts.append(body)
    return b"".join(parts)


def decode_body(body: bytes | memoryview) -> m.Message:
    """Decode one frame body; any failure is a ``ProtocolError``."""
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        code = "unknown-message" if "Invalid value" in text and "$[0]" in text else "bad-message"
        raise ProtocolError(code, text) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError("malformed", str(exc)) from None
    except Exception as exc:  # msgspec may raise others on hostile input
        raise ProtocolError("malformed", f"{type(exc).__name__}: {exc}") from None


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole messages."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None  # body length of the frame in progress
        self.broken = False

    def feed(self, data: bytes) -> list[m.Message]:
        """Add bytes; return every message now complete.

        After a ``ProtocolError`` the decoder stays broken: the stream has
        lost framing and the connection must end.
        """
        if self.broken:
            raise ProtocolError("broken", "decoder already failed")
        self._buf += data
        out: list[m.Message] = []
        buf = self._buf
        pos = 0
        try:
            while True:
                if self._need is None:
                    if len(buf) - pos < 4:
                        break
                    (n,) = HEADER.unpack_from(buf, pos)
                    if n > self.max_frame:
                        raise ProtocolError(
                            "oversized", f"frame of {n} bytes exceeds maximum {self.max_frame}"
                        )
                    if n == 0:
                        raise ProtocolError("malformed", "empty frame")
                    pos += 4
                    self._need = n
                if len(buf) - pos < self._need:
                    break
                body = bytes(buf[pos : pos + self._need])
                pos += self._need
                self._need = None
                out.append(decode_body(body))
        except ProtocolError:
            self.broken = True
            raise
        finally:
            if pos:
                del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
