"""Which egress proxy the upstream goes through, read from the environment as httpx and the
`openai` SDK read it, or from CLIP_PROXY_UPSTREAM_PROXY."""

from __future__ import annotations

import base64

import pytest

from app.upstream.session import egress_proxy

VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def test_no_variable_no_proxy() -> None:
    assert egress_proxy("https://api.example.com/v1", "") is None


def test_by_scheme_then_all_proxy(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HTTP_PROXY", "http://plain:3128")
    clean_env.setenv("ALL_PROXY", "http://any:3128")
    https = egress_proxy("https://api.example.com/v1", "")
    plain = egress_proxy("http://api.example.com/v1", "")
    assert str(https) == "http://any:3128"
    assert str(plain) == "http://plain:3128"


def test_lower_case_and_bare_host_port(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("https_proxy", "squid.internal:3128")
    assert str(egress_proxy("https://api.example.com/v1", "")) == "http://squid.internal:3128"


@pytest.mark.parametrize("no_proxy", ["example.com", ".example.com", "api.example.com", "*"])
def test_no_proxy_bypasses(clean_env: pytest.MonkeyPatch, no_proxy: str) -> None:
    clean_env.setenv("HTTPS_PROXY", "http://squid:3128")
    clean_env.setenv("NO_PROXY", f"localhost,{no_proxy}")
    assert egress_proxy("https://api.example.com/v1", "") is None
    assert egress_proxy("https://other.org/v1", "") is not None or no_proxy == "*"


def test_the_setting_overrides_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HTTPS_PROXY", "http://squid:3128")
    clean_env.setenv("NO_PROXY", "*")
    chosen = egress_proxy("https://api.example.com/v1", "http://egress:8080")
    assert str(chosen) == "http://egress:8080"


def test_credentials_travel_as_a_header_never_in_the_url() -> None:
    chosen = egress_proxy("https://api.example.com/v1", "http://user:s3cret@egress:8080")
    assert chosen is not None
    assert "s3cret" not in str(chosen)
    expected = "Basic " + base64.b64encode(b"user:s3cret").decode()
    assert chosen.headers == {"Proxy-Authorization": expected}


def test_a_socks_proxy_is_refused_without_quoting_it(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ALL_PROXY", "socks5://user:s3cret@tor:9050")
    with pytest.raises(ValueError, match="only http:// and https://") as caught:
        egress_proxy("https://api.example.com/v1", "")
    assert "s3cret" not in str(caught.value)
