"""`clip-proxy serve | config | make-test-model`: the console script."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    from app.config import Settings


DEFAULT_HOST = "127.0.0.1"
# The exit status when start-up fails: the model (or the label vocabulary) cannot be loaded.
# (2: invalid configuration)
EXIT_STARTUP_FAILED = 3
# The port (or address) to listen on is taken or cannot be bound.
EXIT_PORT_BUSY = 4


def main(argv: Sequence[str] | None = None) -> int:
    defaults = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="clip-proxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"clip-proxy {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the proxy",
        description="Run the proxy. Every other setting is a CLIP_PROXY_* variable (README).",
        formatter_class=defaults,
    )
    serve.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on: 0.0.0.0 (IPv4) or :: (IPv6 and IPv4) for every "
        "interface, as in a container; ::1 or [::1] for IPv6 loopback",
    )
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument(
        "--echo",
        action="store_true",
        help="answer from the embedded echo upstream (CLIP_PROXY_UPSTREAM_BASE_URL=echo): "
        "no key, no network, for a first run",
    )

    commands.add_parser(
        "config",
        help="print the effective settings (secrets masked) and where each came from",
        description="Print every setting as `clip-proxy serve` would use it, secrets "
        "masked, and where its value came from: default, environment or file.",
    )

    make = commands.add_parser(
        "make-test-model",
        help="write a tiny random-weight CLIP checkpoint (and DIR/captioner) for tests",
        formatter_class=defaults,
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
        return _serve(args.host, args.port, echo=args.echo)
    if args.command == "config":
        return _config()
    return _make_test_model(args.directory, args.projection_dim, args.vit_l14)


def _serve(host: str, port: int, *, echo: bool = False) -> int:
    from app.config import ECHO_UPSTREAM, Settings
    from app.logging_setup import configure_logging
    from app.main import create_app
    from app.runtime.server import DrainingServer, return_large_buffers_to_the_os, server_config

    try:
        settings = Settings(upstream_base_url=ECHO_UPSTREAM) if echo else Settings()
    except ValidationError as exc:
        print(f"clip-proxy: invalid configuration:\n{describe_invalid(exc)}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, secrets=_secrets(settings))
    _warn_unknown_variables()
    host = host.removeprefix("[").removesuffix("]")  # `[::1]`, as written in a URL
    busy = _bind_problem(host, port)
    if busy is not None:
        logging.getLogger("app.cli").error(
            "cannot listen on %s port %d: %s. Stop what listens there, or choose another "
            "port with --port",
            host,
            port,
            busy,
            extra={"host": host, "port": port},
        )
        return EXIT_PORT_BUSY
    if not _is_loopback(host) and not _secrets(settings, upstream=False):
        logging.getLogger("app.cli").warning(
            "listening on %s without client keys: anyone who reaches this port can use the "
            "proxy and spend the upstream key. Set CLIP_PROXY_API_KEYS (or "
            "CLIP_PROXY_API_KEYS_FILE), or listen on 127.0.0.1",
            host,
            extra={"host": host},
        )
    if not settings.echo_upstream and not settings.upstream_api_key.get_secret_value():
        from urllib.parse import urlsplit

        upstream_host = urlsplit(settings.upstream_base_url).hostname or "?"
        logging.getLogger("app.cli").warning(
            "CLIP_PROXY_UPSTREAM_API_KEY is empty: the upstream %s will answer 401 if it needs "
            "a key. Set it, or try the proxy without one: clip-proxy serve --echo",
            upstream_host,
            extra={"upstream": upstream_host},
        )
    return_large_buffers_to_the_os()
    # One worker per process: the encoder owns the GPU; scale with replicas, not workers.
    # (An app object, not an import string, so uvicorn cannot be asked to fork workers.)
    app = create_app(settings)
    config = server_config(app, settings, host=host, port=port)
    server = DrainingServer(
        config,
        app.state.admission,
        drain_delay_s=settings.drain_delay_s,
        startup=app.state.startup,
    )
    sockets = None
    if host == "::":
        sockets = [_dual_stack_socket(port)]
        # uvicorn names the address only for sockets it opened itself.
        logging.getLogger("app.cli").info(
            "listening on every interface, IPv6 and IPv4", extra={"host": host, "port": port}
        )
    server.run(sockets=sockets)
    # The failure was logged as it happened, with the ways out; only the status is left.
    return EXIT_STARTUP_FAILED if app.state.startup.failure else 0


def _bind_problem(host: str, port: int) -> str | None:
    """Why `host:port` cannot be listened on (taken, say), or None; checked before the model
    loads, so a busy port is told at once and not after half a minute of loading."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        return f"the address does not resolve ({exc.strerror or exc})"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            if family == socket.AF_INET6 and host != "::":
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return "the port is already in use"
                return exc.strerror or str(exc)
    return None


def _warn_unknown_variables() -> None:
    """One warning naming every `CLIP_PROXY_*` variable no setting reads (a typo is
    otherwise silently ignored), each with the closest known name."""
    from app.runtime.settings_report import unknown_variables

    unknown = unknown_variables(os.environ)
    if not unknown:
        return
    named = "; ".join(
        f"{name} (did you mean {close}?)" if close else name for name, close in unknown
    )
    logging.getLogger("app.cli").warning(
        "ignored: no setting reads %s",
        named,
        extra={"unknown_variables": [name for name, _ in unknown]},
    )


def _config() -> int:
    from app.config import Settings
    from app.runtime.settings_report import effective_settings, unknown_variables

    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"clip-proxy: invalid configuration:\n{describe_invalid(exc)}", file=sys.stderr)
        return 2
    rows = effective_settings(settings, os.environ)
    width = max(len(row.variable) for row in rows)
    sources = max(len(row.source) for row in rows)
    for row in rows:
        print(f"{row.variable.ljust(width)}  {row.source.ljust(sources)}  {row.value}")
    for name, close in unknown_variables(os.environ):
        hint = f" (did you mean {close}?)" if close else ""
        print(f"clip-proxy: no setting reads {name}{hint}", file=sys.stderr)
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clip-proxy")
    except PackageNotFoundError:
        return "unknown"


def _dual_stack_socket(port: int) -> socket.socket:
    """`::` as operators mean it, every interface, IPv4 included: asyncio would bind it
    IPv6-only."""
    return socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, assume others can reach it


def describe_invalid(exc: ValidationError) -> str:
    """Each refused setting and why, never its value: pydantic's own text quotes the input,
    and a CACHE_URL or proxy URL may carry a password."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in error["loc"])
        name = f"CLIP_PROXY_{where.upper()}" if where else "settings"
        lines.append(f"  {name}: {error['msg']}")
    return "\n".join(lines)


def _secrets(settings: Settings, *, upstream: bool = True) -> list[str]:
    """Values masked in every log line, whatever logged them: the upstream key, every client
    key (those of API_KEYS_FILE included), and the passwords in the upstream, cache and proxy URLs
    (`upstream=False`: the client keys only)."""
    from urllib.parse import urlsplit

    if not upstream:
        return [key for key in settings.client_keys if key]
    passwords = []
    urls = (
        settings.upstream_base_url,
        settings.cache_url,
        settings.upstream_proxy,
        settings.fetch_proxy,
    )
    for url in urls:
        try:
            passwords.append(urlsplit(url).password or "")
        except ValueError:
            continue
    keys = [settings.upstream_api_key.get_secret_value(), *settings.client_keys, *passwords]
    return [key for key in keys if key]


def _make_test_model(directory: Path, projection_dim: int, vit_l14: bool) -> int:
    from app.engine.test_model import VIT_L14_VISION, make_test_captioner, make_test_model

    vision = VIT_L14_VISION if vit_l14 else None
    make_test_model(directory, projection_dim=projection_dim, vision=vision)
    make_test_captioner(directory / "captioner")
    print(f"wrote a test CLIP checkpoint to {directory}")
    print(f"wrote a test captioner (CLIP_PROXY_CAPTION_MODEL) to {directory / 'captioner'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
