"""The `data:` payloads of an upstream's SSE bytes, event by event, however the bytes were
split: the framing every dialect's stream translator reads.

    events = SseData()
    for payload in events.feed(chunk):   # b'{"choices": ...}', b"[DONE]"
        ...
"""

from __future__ import annotations


class SseData:
    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The payloads of the events this chunk completes; [] until one is whole."""
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + chunk if self._buffer else chunk
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._buffer = buffer
            return []
        self._buffer = buffer[end + 2 :]
        return [
            line[5:].strip()
            for block in buffer[:end].split(b"\n\n")
            for line in block.split(b"\n")
            if line.startswith(b"data:")
        ]
