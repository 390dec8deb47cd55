"""The body memory budget holds bytes, not promises, on a real `clip-proxy serve`: a
declared Content-Length reserves nothing until its bytes arrive, `clip_proxy_body_bytes_held`
shows the bytes actually held, and a body whose arriving bytes do not fit is answered 503
`memory_budget` (readable, with `Connection: close`) only then. A burst of 32 clients with
~19 MB data URLs against a 256 MiB budget: every one reads an answer, none a reset."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from PIL import Image

from tests.helpers import metric_value
from tests.operations.served import Served, connect, read_reply
from tests.operations.test_front_door import HELLO, MiB
from tests.processes import scaled

HELD = "clip_proxy_body_bytes_held"
CHAT = "/v1/chat/completions"


def open_body(served: Served, declared: int, sent: int) -> socket.socket:
    """A chat request that declares `declared` body bytes and sends the first `sent`."""
    sock = connect(served)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % declared
    )
    if sent:
        prefix = b'{"messages":[{"role":"user","content":"'
        sock.sendall((prefix + b"x" * sent)[:sent])
    return sock


def wait_for_held(served: Served, expected: int) -> float:
    """Poll the held gauge until it reads `expected`; return the last reading."""
    deadline = time.monotonic() + scaled(20)
    held = metric_value(served.url, HELD)
    while held != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        held = metric_value(served.url, HELD)
    return held


def test_declared_lengths_hold_nothing_until_their_bytes_arrive(
    serve: Callable[..., Served],
) -> None:
    # 16 x 64 MiB declared is four times this budget; under the old up-front reservation
    # four of them locked every body out for the body timeout.
    served = serve(max_inflight_body_bytes=256 * MiB)
    fds_before = served.fds()
    sent = 100_000
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(open_body(served, 64 * MiB, sent)) for _ in range(16)]
        held = wait_for_held(served, 16 * sent)
        assert held == 16 * sent, f"held {held:.0f} bytes, the bodies sent {16 * sent}"
        for _ in range(3):
            response = httpx.post(served.url + CHAT, json=HELLO, timeout=30)
            assert response.status_code == 200, response.text
        # A 6 MiB body passes beside them too: its bytes fit, whatever the others declared.
        big = {"messages": [{"role": "user", "content": "y" * (6 * MiB)}]}
        assert httpx.post(served.url + CHAT, json=big, timeout=60).status_code == 200
        assert all(sock.fileno() >= 0 for sock in sockets)
    # The sockets are closed: their bytes are let go and the server closes its ends.
    assert wait_for_held(served, 0) == 0
    deadline = time.monotonic() + scaled(20)
    while served.fds() - fds_before > 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert served.fds() - fds_before <= 2, f"{served.fds() - fds_before} connections left open"


def test_bytes_that_do_not_fit_get_a_readable_503_when_they_arrive(
    serve: Callable[..., Served],
) -> None:
    served = serve(max_inflight_body_bytes=8 * MiB)
    holder = open_body(served, 8 * MiB, 7 * MiB)  # 7 MiB held, 1 MiB free
    with holder:
        assert wait_for_held(served, 7 * MiB) == 7 * MiB
        # A small body still fits beside it.
        assert httpx.post(served.url + CHAT, json=HELLO, timeout=30).status_code == 200
        # A 4 MiB body is let in and read until its bytes pass the budget, then refused;
        # its rest is read and dropped, so the client reads the answer, not a reset.
        with httpx.Client(timeout=60) as client:
            for _ in range(3):
                big = {"messages": [{"role": "user", "content": "z" * (4 * MiB)}]}
                refused = client.post(served.url + CHAT, json=big)
                assert refused.status_code == 503, refused.text
                assert refused.headers["retry-after"] == "1"
                assert refused.headers["connection"] == "close"
                assert refused.json()["error"]["code"] == "memory_budget"
                assert client.post(served.url + CHAT, json=HELLO).status_code == 200
        assert metric_value(served.url, HELD) == 7 * MiB  # the refused bodies hold nothing
        # The holder sends the rest of its body (8 MiB in all): its bytes fit, it is served.
        holder.sendall(b"x" * (MiB - 4) + b'"}]}')
        reply = read_until_answer(holder)
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
    assert wait_for_held(served, 0) == 0


def read_until_answer(sock: socket.socket) -> bytes:
    """What the server answers to a request sent on `sock` (the head and some body)."""
    sock.settimeout(scaled(30))
    with contextlib.suppress(TimeoutError):
        first = sock.recv(65536)
        if first.startswith(b"HTTP/1.1 "):
            return first
    return read_reply(sock)


def noise_png_chat_body(raw_bytes: int) -> bytes:
    """A chat body with one data-URL PNG of noise of about `raw_bytes` (noise does not
    compress: the PNG is about 3 bytes a pixel)."""
    side = int((raw_bytes / 3) ** 0.5)
    pixels = np.random.default_rng(7).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    url = b"data:image/png;base64," + base64.b64encode(buffer.getvalue())
    return (
        b'{"messages":[{"role":"user","content":[{"type":"text","text":"what is this?"},'
        b'{"type":"image_url","image_url":{"url":"' + url + b'"}}]}]}'
    )


def post_body(url: str, body: bytes) -> httpx.Response | Exception:
    try:
        return httpx.post(
            url + CHAT, content=body, headers={"content-type": "application/json"}, timeout=120
        )
    except httpx.HTTPError as error:  # a reset: the answer was lost
        return error


def test_a_burst_of_large_data_urls_gets_answers_not_resets(
    serve: Callable[..., Served],
) -> None:
    served = serve(max_inflight_body_bytes=256 * MiB)
    body = noise_png_chat_body(14 * 1000 * 1000)  # ~18.7 MB as base64: 32 ask 2.3 budgets
    assert 18 * 1000 * 1000 < len(body) < 20 * MiB
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda _: post_body(served.url, body), range(32)))
    errors = [answer for answer in answers if isinstance(answer, Exception)]
    assert not errors, f"{len(errors)} of 32 clients got a connection error: {errors[:3]!r}"
    responses = [answer for answer in answers if isinstance(answer, httpx.Response)]
    codes = sorted(response.status_code for response in responses)
    print(
        f"32 x {len(body) / 1e6:.1f} MB, 256 MiB budget: {codes.count(200)} x 200, "
        f"{codes.count(503)} x 503"
    )
    assert set(codes) <= {200, 503}, [
        r.text[:200] for r in responses if r.status_code not in (200, 503)
    ]
    assert codes.count(200) >= 1
    for response in responses:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "memory_budget"
            assert response.headers["connection"] == "close"
    assert wait_for_held(served, 0) == 0
