"""clip-proxy.

Importing any part of the proxy first switches off the telemetry its libraries would send:
ONNX Runtime (under RapidOCR) reports usage events on Linux since 1.29 unless
`ORT_DISABLE_TELEMETRY` is set before it loads, and the Hugging Face libraries report
downloads unless told not to. This package's `__init__` runs before any of its modules, so
the switches hold for every entry point (`clip-proxy serve`, the app factory under another
ASGI server, a bench script). They are forced, not defaulted: a self-hosted proxy that
handles private images has no reason to contact a third party, so there is no setting to
turn them back on.
"""

import os

TELEMETRY_OFF = {
    "ORT_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}

os.environ.update(TELEMETRY_OFF)
