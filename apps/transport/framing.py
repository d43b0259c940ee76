"""WebSocket frames built once per message, for every recipient (RFC 6455 5.2)."""

from __future__ import annotations

import struct


class FramedStr(str):
    """A text message, and its unmasked, final, text WebSocket frame.

    An emit to N clients frames the message once instead of N times; a connection that did not
    negotiate an extension writes :attr:`frame` as it is.
    """

    __slots__ = ("frame",)
    frame: bytes

    @classmethod
    def of(cls, text: str) -> FramedStr:
        framed = cls(text)
        payload = text.encode("utf-8")
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x81, length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x81, 126, length)
        else:
            header = struct.pack("!BBQ", 0x81, 127, length)
        framed.frame = header + payload
        return framed
