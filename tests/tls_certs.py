"""A private CA and the certificates it signs, made with the openssl command line in a
temporary directory: a server certificate for 127.0.0.1 and a client certificate for mTLS.

    pki = make_pki(tmp_path)
    FakeUpstream(ssl_context=pki.server_context(require_client_cert=True))
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _sign(directory: Path, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions + "\n")
    _openssl("req", *KEY, "-keyout", key, "-out", csr, "-subj", subject)
    _openssl(
        "x509", "-req", "-in", csr, "-CA", directory / "ca.pem", "-CAkey", directory / "ca.key",
        "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext_file,
    )  # fmt: skip
    return cert, key


def make_pki(directory: Path) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (scripts/setup.sh installs it)")
    _openssl(
        "req", "-x509", *KEY, "-keyout", directory / "ca.key", "-out", directory / "ca.pem",
        "-days", "2", "-subj", "/CN=clip-proxy test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign",
    )  # fmt: skip
    server = _sign(
        directory, "server", "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:upstream.test\nextendedKeyUsage=serverAuth",
    )  # fmt: skip
    client = _sign(directory, "client", "/CN=clip-proxy", "extendedKeyUsage=clientAuth")
    return Pki(directory / "ca.pem", *server, *client)
