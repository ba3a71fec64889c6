"""Issue 19, item 3: a server without a key answers its own pages, not any web page the user opens.

A real ``acestep-api`` without a key on loopback: foreign Host names (DNS rebinding) and cross-site
origins are refused before anything runs, JSON must say it is JSON, and the MCP transport has the
SDK's rebinding protection on.
"""

from __future__ import annotations

import json

import pytest
from _server import Server

BODY = {"caption": "a song", "audio_duration": 10, "inference_steps": 1}


@pytest.fixture(scope="module")
def open_api(upstream_base, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("open_api")
    server = Server(
        upstream_base, workdir, ACESTEP_API_KEY="", ACESTEP_CORS_ORIGINS="http://studio.example:3000"
    )
    server.auth = {}
    yield server
    server.stop()


def jobs(server: Server) -> int:
    return server.get("/v1/stats").json()["data"]["jobs"]["total"]


@pytest.mark.parametrize("path", ["/health", "/v1/stats", "/mcp/"])
def test_a_foreign_host_name_is_refused(open_api, path):
    answer = open_api.get(path, headers={"Host": "attacker.example:8001"})
    assert answer.status_code == 421, answer.text
    assert "ACESTEP_ALLOWED_HOSTS" in answer.json()["detail"]


def test_loopback_names_are_answered(open_api):
    for host in ("localhost", f"localhost:{open_api.port}", "127.0.0.1", f"[::1]:{open_api.port}"):
        assert open_api.get("/health", headers={"Host": host}).status_code == 200, host


def test_a_cross_site_page_cannot_queue_a_job(open_api):
    before = jobs(open_api)
    for origin in ("http://attacker.example", "null", f"http://localhost.attacker.example:{open_api.port}"):
        answer = open_api.post("/release_task", json=BODY, headers={"Origin": origin})
        assert answer.status_code == 403, (origin, answer.text)
    freed = open_api.post("/unload", json={"level": "free"}, headers={"Origin": "http://attacker.example"})
    assert freed.status_code == 403
    assert jobs(open_api) == before


def test_the_servers_own_pages_and_configured_origins_may(open_api):
    own = open_api.post("/release_task", json=BODY, headers={"Origin": f"http://127.0.0.1:{open_api.port}"})
    assert own.status_code == 200, own.text
    studio = open_api.post("/release_task", json=BODY, headers={"Origin": "http://studio.example:3000"})
    assert studio.status_code == 200, studio.text


def test_json_sent_as_plain_text_is_refused(open_api):
    """A web page may POST text/plain anywhere without asking; upstream read it as JSON."""
    before = jobs(open_api)
    answer = open_api.post("/release_task", content=json.dumps(BODY), headers={"Content-Type": "text/plain"})
    assert answer.status_code == 415, answer.text
    assert "application/json" in answer.json()["detail"]
    assert jobs(open_api) == before


def test_mcp_has_the_sdks_rebinding_protection_without_a_key():
    from acestep.serving.config import ServerConfig
    from acestep.serving.origins import mcp_transport_security

    settings = mcp_transport_security(ServerConfig(host="127.0.0.1"))
    assert settings.enable_dns_rebinding_protection
    assert "127.0.0.1:*" in settings.allowed_hosts and "localhost:*" in settings.allowed_hosts
    assert not any("attacker" in h for h in settings.allowed_hosts)
    keyed = mcp_transport_security(ServerConfig(host="0.0.0.0", api_key="k" * 20))
    assert not keyed.enable_dns_rebinding_protection  # the key protects; proxies may use any name


def test_allowed_hosts_widen_the_rule(upstream_base, tmp_path):
    server = Server(upstream_base, tmp_path, ACESTEP_API_KEY="", ACESTEP_ALLOWED_HOSTS="studio.lan")
    try:
        assert server.client.get("/health", headers={"Host": "studio.lan:8001"}).status_code == 200
        assert server.client.get("/health", headers={"Host": "other.lan"}).status_code == 421
    finally:
        server.stop()
