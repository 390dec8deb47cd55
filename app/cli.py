"""`clip-proxy serve | make-test-model`: the console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    from app.config import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clip-proxy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)

    make = commands.add_parser(
        "make-test-model", help="write a tiny random-weight CLIP checkpoint for tests"
    )
    make.add_argument("directory", type=Path)
    make.add_argument("--projection-dim", type=int, default=768)
    make.add_argument(
        "--vit-l14",
        action="store_true",
        help="give it ViT-L/14's vision tower (random weights, real speed; ~1.2 GB)",
    )

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args.host, args.port)
    return _make_test_model(args.directory, args.projection_dim, args.vit_l14)


def _serve(host: str, port: int) -> int:
    import uvicorn

    from app.config import Settings
    from app.logging_setup import configure_logging
    from app.main import create_app
    from app.server import DrainingServer

    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"clip-proxy: invalid configuration:\n{describe_invalid(exc)}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, secrets=_secrets(settings))
    # One worker per process: the encoder owns the GPU; scale with replicas, not workers.
    # (An app object, not an import string, so uvicorn cannot be asked to fork workers.)
    # log_config=None keeps the JSON logging above; the proxy logs each request itself.
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    server = DrainingServer(config, app.state.admission, drain_delay_s=settings.drain_delay_s)
    server.run()
    return 0


def describe_invalid(exc: ValidationError) -> str:
    """Each refused setting and why, never its value: pydantic's own text quotes the input,
    and a CACHE_URL or proxy URL may carry a password."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in error["loc"])
        name = f"CLIP_PROXY_{where.upper()}" if where else "settings"
        lines.append(f"  {name}: {error['msg']}")
    return "\n".join(lines)


def _secrets(settings: Settings) -> list[str]:
    """Values masked in every log line, whatever logged them: the upstream key, every
    client key (those of API_KEYS_FILE included), and the passwords in CACHE_URL and the
    proxy URLs."""
    from urllib.parse import urlsplit

    from app.api.auth import client_keys

    upstream = settings.upstream_api_key.get_secret_value()
    passwords = []
    for url in (settings.cache_url, settings.upstream_proxy, settings.fetch_proxy):
        try:
            passwords.append(urlsplit(url).password or "")
        except ValueError:
            continue
    keys = [upstream, *client_keys(settings.api_keys, settings.api_keys_file), *passwords]
    return [key for key in keys if key]


def _make_test_model(directory: Path, projection_dim: int, vit_l14: bool) -> int:
    from app.encoder.test_model import VIT_L14_VISION, make_test_model

    vision = VIT_L14_VISION if vit_l14 else None
    make_test_model(directory, projection_dim=projection_dim, vision=vision)
    print(f"wrote a test CLIP checkpoint to {directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
