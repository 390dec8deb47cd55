"""Chat Completions: the proxy's own dialect. Requests are the internal request as they are, and
the upstream's answers (JSON or SSE) are relayed byte for byte, so there is nothing to
translate; the route is `app/api/chat.py`."""

from __future__ import annotations

from app.dialects import CHAT

NAME = CHAT
