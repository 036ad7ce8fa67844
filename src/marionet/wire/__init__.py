"""marionet wire protocol: typed messages and length-prefixed msgpack framing."""

from marionet.wire.codec import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    ProtocolError,
    decode_body,
    encode,
    encode_many,
)
from marionet.wire.messages import PROTOCOL_VERSION

__all__ = [
    "DEFAULT_MAX_FRAME",
    "FrameDecoder",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "decode_body",
    "encode",
    "encode_many",
]
