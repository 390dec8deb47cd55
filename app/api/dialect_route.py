"""What the dialect routes (`/v1/responses`, `/v1/messages`) share: the chat route's headers
(dry run, preset, prompt format) read from the request, and `ChatService.complete` run under
the disconnect watch with the dialect's metrics label.

    outcome = await complete_for(request, service, chat, dialect=ANTHROPIC)
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED)   # the client left while it waited
"""

from __future__ import annotations

from fastapi import Request

from app.api.chat import DRY_RUN_HEADER, FORMAT_HEADER, PRESET_HEADER, choice_of
from app.api.disconnect import ClientDisconnected, unless_disconnected
from app.prompt.protocol import ChatCompletionRequest, PromptFormat, PromptPreset
from app.services.chat import ChatOutcome, ChatService


def dry_run_of(request: Request) -> bool:
    return request.headers.get(DRY_RUN_HEADER, "").lower() in ("1", "true", "yes")


async def complete_for(
    request: Request,
    service: ChatService,
    chat: ChatCompletionRequest,
    *,
    dialect: str,
    dry_run: bool | None = None,
) -> ChatOutcome | None:
    """The service's outcome for the internal chat request; None if the client left first."""
    try:
        return await unless_disconnected(
            request.receive,
            service.complete(
                chat,
                dry_run=dry_run_of(request) if dry_run is None else dry_run,
                preset=choice_of(
                    PromptPreset,
                    "X-Clip-Proxy-Preset",
                    request.headers.get(PRESET_HEADER),
                    "invalid_preset",
                ),
                prompt_format=choice_of(
                    PromptFormat,
                    "X-Clip-Proxy-Format",
                    request.headers.get(FORMAT_HEADER),
                    "invalid_format",
                ),
                dialect=dialect,
            ),
        )
    except ClientDisconnected:
        return None
