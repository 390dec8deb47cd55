"""Who gets in: load shedding past a limit of requests in flight, and draining on shutdown.

Pure ASGI, so a request counts as in flight until its last byte is sent (a stream included)
and disconnects still reach the route. Past `max_in_flight`, or once draining has begun, a
`/v1/*` request is answered 503 with Retry-After at once, before its body is read: a
client (or load balancer) retries elsewhere instead of queueing behind work that cannot
finish in time. Health and metrics are never shed.

A request takes its working slot only once its body has fully arrived (the check is made
again then): a client trickling its body holds no slot, so any number of slow clients
cannot make a normal request wait or fail. The body's time is bounded by
`BodyLimitMiddleware` (CLIP_PROXY_BODY_TIMEOUT_S), its memory by the body budget.

    admission = Admission(max_in_flight=256, on_refused=lambda reason: counter.inc())
    app.add_middleware(AdmissionMiddleware, admission=admission)
    admission.begin_draining()       # on SIGTERM: /readyz 503, new requests 503
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.early_answer import Lingering
from app.errors import Overloaded

SHED_PREFIX = "/v1/"


class Admission:
    """The count of requests in flight and the draining flag of one process."""

    def __init__(
        self, max_in_flight: int = 0, *, on_refused: Callable[[str], None] | None = None
    ) -> None:
        self.max_in_flight = max_in_flight  # 0: no limit
        self.in_flight = 0
        self.draining = False
        # Told the reason of each refusal (`draining`, `overloaded`): the metrics count them.
        self.on_refused: Callable[[str], None] = on_refused or _ignore

    def begin_draining(self) -> None:
        self.draining = True

    def refusal(self) -> Overloaded | None:
        """Why a new request may not start now, if it may not."""
        if self.draining:
            return Overloaded(
                "the server is shutting down; retry on another replica",
                retry_after_s=1,
                code="draining",
            )
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            return Overloaded(
                f"too many requests in flight (limit {self.max_in_flight}); retry shortly",
                retry_after_s=1,
            )
        return None


def _ignore(reason: str) -> None:
    pass


class AdmissionMiddleware:
    def __init__(
        self, app: ASGIApp, admission: Admission, lingering: Lingering | None = None
    ) -> None:
        self.app = app
        self.admission = admission
        self.lingering = lingering or Lingering()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(SHED_PREFIX):
            await self.app(scope, receive, send)
            return
        refusal = self.admission.refusal()
        if refusal is not None:
            self._refused(refusal)
            await self.lingering.answer(refusal, scope, receive, send)
            return
        admitted = False

        def admit() -> None:
            nonlocal admitted
            refusal = self.admission.refusal()
            if refusal is not None:
                self._refused(refusal)
                raise refusal  # inside the route's body read: the app's handler answers it
            self.admission.in_flight += 1
            admitted = True

        async def receive_then_admit() -> Message:
            message = await receive()
            if not admitted and not (
                message["type"] == "http.request" and message.get("more_body", False)
            ):
                admit()  # the whole body is here (or the client left): now it works
            return message

        if not has_body(scope):
            admit()  # checked just above: it cannot raise here
        try:
            await self.app(scope, receive_then_admit, send)
        finally:
            if admitted:
                self.admission.in_flight -= 1

    def _refused(self, refusal: Overloaded) -> None:
        self.admission.on_refused(refusal.code or "overloaded")


def has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False
