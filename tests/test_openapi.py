"""/openapi.json on a real server with a key and the training routes on: every request field
described, the field table's types, bounds and defaults, typed answers, the key as a security
scheme, and the docs pages open while the API stays behind the key. Swagger UI and ReDoc in Debian's
headless Chromium: they load nothing from beyond 127.0.0.1, and Authorize turns 401 into 200.
Screenshots go to test-artifacts/ (not committed)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from _browser import launch, shot
from _server import KEY, Server
from playwright.sync_api import Page, sync_playwright

from acestep.fields import FIELDS
from acestep.jobs.outputs import MEDIA_TYPES
from acestep.request import AUDIO_FORMATS
from acestep.tasks import MAX_BPM, MAX_STEPS, MIN_BPM

ERROR_REF = "#/components/schemas/ErrorDetail"


@pytest.fixture(scope="module")
def server(upstream_base, tmp_path_factory):
    srv = Server(upstream_base, tmp_path_factory.mktemp("openapi"), ACESTEP_TRAINING="on")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def schema(server) -> dict:
    response = server.client.get("/openapi.json")  # no key: the docs hold no secret
    assert response.status_code == 200
    return response.json()


def operations(schema: dict):
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def body_properties(operation: dict) -> dict:
    contents = operation.get("requestBody", {}).get("content", {})
    return {name: prop for media in contents.values() for name, prop in media["schema"]["properties"].items()}


def test_every_request_body_property_is_described(schema):
    assert "/v1/training/start" in schema["paths"] and "/v1/dataset/scan" in schema["paths"]
    missing = [
        f"{method.upper()} {path}: {name}"
        for path, method, operation in operations(schema)
        for name, prop in body_properties(operation).items()
        if not prop.get("description")
    ]
    assert missing == []


def test_release_task_body_is_the_field_table(schema):
    props = body_properties(schema["paths"]["/release_task"]["post"])
    assert {spec.name for spec in FIELDS} <= set(props)
    bpm = props["bpm"]
    assert (bpm["type"], bpm["minimum"], bpm["maximum"]) == ("integer", MIN_BPM, MAX_BPM)
    assert props["audio_format"]["enum"] == list(AUDIO_FORMATS)
    assert props["audio_format"]["default"] == "mp3"  # the REST default, not the library's flac
    assert props["lm_cfg_scale"]["default"] == 2.5  # upstream's REST default for the LM
    assert props["inference_steps"]["maximum"] == MAX_STEPS and props["inference_steps"]["default"] == 8
    assert props["guidance_scale"]["maximum"] == 50.0  # GenerationRequest's own check
    assert "caption" in props["prompt"]["description"]  # the alias is named
    assert "--" not in props["flow_edit_morph"]["description"]  # CLI flags read as field names
    assert "src_audio_path" in props["flow_edit_morph"]["description"]
    assert "default 1)" not in props["batch_size"]["description"]  # the CLI's default gives way
    examples = schema["paths"]["/release_task"]["post"]["requestBody"]["content"]["application/json"]
    assert examples["examples"]


def test_answers_are_typed_and_errors_have_one_shape(schema):
    paths = schema["paths"]
    release = paths["/release_task"]["post"]["responses"]
    ok = release["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    data = schema["components"]["schemas"][ok]["properties"]["data"]["$ref"].rsplit("/", 1)[-1]
    assert {"task_id", "queue_position", "warnings"} <= set(
        schema["components"]["schemas"][data]["properties"]
    )
    assert release["429"]["content"]["application/json"]["schema"]["$ref"] == ERROR_REF
    assert schema["components"]["schemas"]["ErrorDetail"]["required"] == ["detail"]
    for path in ("/lego", "/v1/audio"):
        content = paths[path]["post" if path == "/lego" else "get"]["responses"]["200"]["content"]
        assert set(content) == set(MEDIA_TYPES.values())  # audio, not JSON
    assert (
        paths["/v1/audio"]["get"]["responses"]["404"]["content"]["application/json"]["schema"]["$ref"]
        == ERROR_REF
    )
    events = paths["/v1/jobs/{task_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"] and "404" in events["responses"]
    assert not any("422" in op["responses"] for _, _, op in operations(schema))  # answered 400 here


def test_tags_and_the_key_as_a_security_scheme(schema):
    declared = {tag["name"] for tag in schema["tags"]}
    assert all(tag["description"] for tag in schema["tags"])
    for path, method, operation in operations(schema):
        assert operation.get("tags") and set(operation["tags"]) <= declared, (method, path)
        secured = operation.get("security") == [{"bearerAuth": []}]
        assert secured == (path != "/health"), (method, path)
        assert secured <= ("401" in operation["responses"])
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_docs_are_open_and_the_api_is_not(server):
    for page in ("/docs", "/redoc", "/openapi.json"):
        assert server.client.get(page).status_code == 200, page
    assert server.client.get("/v1/stats").status_code == 401
    assert server.client.get("/v1/stats", headers={"Authorization": "Bearer wrong-key"}).status_code == 401
    assert server.get("/v1/stats").status_code == 200
    # Swagger UI's and ReDoc's files come from this server, open with any or no key.
    html = server.client.get("/docs").text
    assert "/docs/static/swagger-ui-bundle.js" in html and "https://" not in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"):
        wrong_key = {"Authorization": "Bearer wrong-key"}
        assert server.client.get(f"/docs/static/{asset}", headers=wrong_key).status_code == 200, asset


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


def offline_page(browser) -> tuple[Page, list[str]]:
    """A fresh page (no stored authorization) and the URL of every request it sends out; one for
    anywhere but 127.0.0.1 is recorded and dropped. (A request the page's Content-Security-Policy
    blocks never gets this far: it does not leave the browser.)"""
    context = browser.new_context()
    sent: list[str] = []

    def forward(route) -> None:
        sent.append(route.request.url)
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            route.abort()

    context.route("**/*", forward)
    return context.new_page(), sent


def assert_loopback_only(sent: list[str]) -> None:
    assert any(url.endswith(".js") for url in sent)  # the page's script came from this server
    assert all(urlsplit(url).hostname == "127.0.0.1" for url in sent), sent


def execute_stats(page: Page, expected: str) -> None:
    """Run GET /v1/stats from its opened operation and wait for the status Swagger UI shows."""
    operation = page.locator(".opblock-get", has=page.locator('[data-path="/v1/stats"]'))
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table tr.response .response-col_status")
    status.filter(has_text=expected).wait_for()
    status.first.scroll_into_view_if_needed()  # for the screenshot
    assert status.first.inner_text().strip() == expected


def test_swagger_ui_works_offline_and_authorize_opens_the_api(server, browser):
    page, sent = offline_page(browser)
    page.goto(f"http://127.0.0.1:{server.port}/docs")
    page.locator(".swagger-ui .info .title").wait_for()
    authorize = page.locator(".scheme-container button.authorize")
    assert authorize.is_visible()
    operation = page.locator(".opblock-get", has=page.locator('[data-path="/v1/stats"]'))
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    execute_stats(page, "401")  # no key yet
    authorize.click()
    dialog = page.locator(".modal-ux")
    dialog.locator("input").fill(KEY)
    dialog.locator(".auth-btn-wrapper button.authorize").click()
    shot(page, "openapi-docs-authorized")
    dialog.locator(".auth-btn-wrapper button.btn-done").click()
    execute_stats(page, "200")
    shot(page, "openapi-docs-stats")
    assert_loopback_only(sent)
    page.context.close()


def test_redoc_renders_offline(server, browser):
    page, sent = offline_page(browser)
    page.goto(f"http://127.0.0.1:{server.port}/redoc")
    page.locator(".menu-content").get_by_text("generation", exact=True).first.wait_for()
    assert page.locator("h1").first.inner_text().startswith("acestep")
    shot(page, "openapi-docs-redoc")
    assert_loopback_only(sent)
    page.context.close()
