"""Issue 21, item 6: CORS admits pages on localhost by default, as upstream does, and
``ACESTEP_CORS_ORIGINS`` widens it; a server without a key accepts the same origins
(docs/security.md, patches/0048). Real ``acestep-api`` processes with tiny checkpoints."""

from __future__ import annotations

import pytest
from _server import Server

from acestep.serving.origins import is_local_origin

LOCAL_PAGE = "http://localhost:3000"
FOREIGN = "https://evil.example"


def preflight(server: Server, origin: str, path: str = "/release_task"):
    """What a browser sends before a JSON POST with a key (no key header: a preflight has none)."""
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization",
    }
    return server.client.options(path, headers=headers)


@pytest.fixture(scope="module")
def keyed(upstream_base, tmp_path_factory):
    server = Server(upstream_base, tmp_path_factory.mktemp("cors_keyed"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def open_api(upstream_base, tmp_path_factory):
    """No key, and the setting names one foreign origin."""
    server = Server(
        upstream_base, tmp_path_factory.mktemp("cors_open"), ACESTEP_API_KEY="", ACESTEP_CORS_ORIGINS=FOREIGN
    )
    server.auth = {}
    yield server
    server.stop()


def test_cors_preflight_from_localhost_is_allowed_by_default(keyed, open_api):
    for server in (keyed, open_api):
        answer = preflight(server, LOCAL_PAGE)
        assert answer.status_code == 200, answer.text
        assert answer.headers["access-control-allow-origin"] == LOCAL_PAGE
        methods = {m.strip() for m in answer.headers["access-control-allow-methods"].split(",")}
        assert methods == {"GET", "POST", "OPTIONS"}
        allowed = answer.headers["access-control-allow-headers"].lower()
        assert "content-type" in allowed and "authorization" in allowed
        assert "access-control-allow-credentials" not in answer.headers
    # The page then reads the answer: with a key, and without one (the origin guard lets it through).
    stats = keyed.get("/v1/stats", headers={"Origin": "http://127.0.0.1:5173"})
    assert (
        stats.status_code == 200 and stats.headers["access-control-allow-origin"] == "http://127.0.0.1:5173"
    )
    stats = open_api.get("/v1/stats", headers={"Origin": LOCAL_PAGE})
    assert stats.status_code == 200, stats.text
    assert stats.headers["access-control-allow-origin"] == LOCAL_PAGE


def test_cors_preflight_from_a_foreign_origin_is_refused_by_default(keyed, open_api):
    answer = preflight(keyed, FOREIGN)
    assert answer.status_code == 400 and "access-control-allow-origin" not in answer.headers
    stats = keyed.get("/v1/stats", headers={"Origin": FOREIGN})
    assert "access-control-allow-origin" not in stats.headers  # the browser withholds the answer
    # Without a key, an origin the setting does not name is refused before anything runs.
    for origin in ("https://other.example", "http://localhost.evil.example", "null"):
        answer = preflight(open_api, origin)
        assert answer.status_code == 403 and "access-control-allow-origin" not in answer.headers, origin


def test_cors_setting_admits_a_named_origin_without_a_key(open_api):
    answer = preflight(open_api, FOREIGN)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == FOREIGN
    stats = open_api.get("/v1/stats", headers={"Origin": FOREIGN})
    assert stats.status_code == 200 and stats.headers["access-control-allow-origin"] == FOREIGN


def test_local_origins_are_upstreams_pattern_without_null():
    for origin in (
        "http://localhost",
        "http://localhost:3000",
        "https://127.0.0.1:8443",
        "http://[::1]:5173",
    ):
        assert is_local_origin(origin), origin
    wrong = ("null", "http://localhost.evil.example", "http://127.0.0.1.evil.example:80", "ftp://localhost")
    for origin in (*wrong, "http://evil.example/localhost", "http://localhost:3000/x"):
        assert not is_local_origin(origin), origin
