"""Upstream's chat-completions surface (issue 21, flow 7) on a real uvicorn: the OpenRouter test
client's calls and the agent-skill CLI's completion payload, sent unchanged, with the responses
they read; the key, the refusals that name the wrong part, and the OpenRouter model list."""

from __future__ import annotations

import base64
import io
import json
import textwrap
from types import SimpleNamespace

import httpx
import pytest
import soundfile as sf
from _raw_http import connect, head, read_response
from _server import KEY, Server

from acestep.checkpoints.variants import detect_variant
from acestep.jobs.failures import FAILURE_STATUS, RefusalCause
from acestep.serving.chat_messages import parse_messages
from acestep.serving.chat_schema import ChatCompletionRequest
from acestep.serving.routes_chat import NOTHING_ASKED, _values
from acestep.testing import make_tiny_checkpoint, make_tiny_lm, synthetic_audio

CHAT = "/v1/chat/completions"
TEST_CLIENT_HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
SKILL_HEADERS = {
    "Content-Type": "application/json; charset=utf-8",
    "Authorization": f"Bearer {KEY}",
    "User-Agent": "curl/8.7.1",
}

# upstream's openrouter/client_test.py payloads, unchanged (no "model": the hosted API's default).
NATURAL = {
    "messages": [{"role": "user", "content": "Generate an upbeat pop song about summer and travel"}],
    "sample_mode": True,
    "audio_config": {"vocal_language": "en", "duration": 30},
}
TAGGED_CONTENT = """<prompt>A gentle acoustic ballad in C major, 80 BPM, female vocal</prompt>
<lyrics>[Verse 1]
Sunlight through the window
A brand new day begins

[Chorus]
We are the dreamers
We are the light</lyrics>"""
TAGGED = {
    "messages": [{"role": "user", "content": TAGGED_CONTENT}],
    "audio_config": {"vocal_language": "en", "duration": 30},
}
LYRICS_ONLY = {
    "messages": [
        {
            "role": "user",
            "content": "[Verse 1]\nWalking down the street\nFeeling the beat\n\n[Chorus]\n"
            "Dance with me tonight\nUnder the moonlight",
        }
    ],
    "audio_config": {"vocal_language": "en", "duration": 30},
}
INSTRUMENTAL = {
    "messages": [
        {"role": "user", "content": "<prompt>Epic orchestral cinematic score, dramatic and powerful</prompt>"}
    ],
    "audio_config": {"instrumental": True, "duration": 30},
}
STREAMING = {
    "messages": [{"role": "user", "content": "Generate a cheerful guitar piece"}],
    "stream": True,
    "sample_mode": True,
    "audio_config": {"instrumental": True, "duration": 30},
}
FULL = {
    "messages": [
        {
            "role": "user",
            "content": "<prompt>Dreamy lo-fi hip hop beat with vinyl crackle</prompt><lyrics>[inst]</lyrics>",
        }
    ],
    "temperature": 0.9,
    "top_p": 0.95,
    "thinking": False,
    "use_cot_caption": True,
    "use_cot_language": False,
    "use_format": True,
    "audio_config": {"bpm": 85, "duration": 30, "instrumental": True},
}


@pytest.fixture(scope="module")
def turbo_with_lm(tmp_path_factory) -> object:
    """A turbo DiT (the model the skill CLI names by default) beside a tiny 5 Hz LM."""
    root = make_tiny_checkpoint(tmp_path_factory.mktemp("chat_ckpt"), variant="turbo", seed=0)
    make_tiny_lm(root, size="1.7B", seed=0)
    return root


@pytest.fixture(scope="module")
def server(turbo_with_lm, tmp_path_factory):
    server = Server(
        turbo_with_lm, tmp_path_factory.mktemp("chat"), dit="acestep-v15-turbo", ACESTEP_INIT_LLM="true"
    )
    yield server
    server.stop()


def wav_b64(seconds: float, seed: int = 3) -> str:
    buffer = io.BytesIO()
    sf.write(buffer, synthetic_audio(seconds, seed=seed), 48000, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decoded(url: str) -> tuple[str, sf._SoundFileInfo]:
    """What the test client does with an audio URL (split at the first comma, base64-decode), and
    the audio's header read back."""
    assert url.startswith("data:"), url[:40]
    head, data = url.split(",", 1)
    return head, sf.info(io.BytesIO(base64.b64decode(data)))


def audio_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    return [part["audio_url"]["url"] for part in message.get("audio") or []]


def test_flow_7_openrouter_test_client(server):
    client = server.client
    assert client.get("/health").status_code == 200  # the client sends no key here
    assert client.get("/api/v1/models", headers=TEST_CLIENT_HEADERS).status_code == 200
    bodies = {}
    for name, payload in (
        ("natural", NATURAL),
        ("tagged", TAGGED),
        ("lyrics", LYRICS_ONLY),
        ("instrumental", INSTRUMENTAL),
        ("full", FULL),
    ):
        response = client.post(CHAT, headers=TEST_CLIENT_HEADERS, json=payload, timeout=300)
        urls = audio_of(response)
        body = bodies[name] = response.json()
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
        assert body["model"] == "acestep/acestep-v15-turbo"  # none sent: the default's name
        assert body["choices"][0]["finish_reason"] == "stop"
        assert len(urls) == 1, payload  # batch_size defaults to 1, as upstream's chat
        head, info = decoded(urls[0])
        assert head == "data:audio/mpeg;base64" and info.format == "MP3"  # chat's default format
        assert abs(info.duration - 30) < 1.5
        content = body["choices"][0]["message"]["content"]
        assert content.startswith("## Metadata\n"), content
    text = bodies["tagged"]["choices"][0]["message"]["content"]
    assert "**Caption:** A gentle acoustic ballad in C major" in text
    assert "## Lyrics\n[Verse 1]\nSunlight through the window" in text
    lyrics = bodies["lyrics"]["choices"][0]["message"]["content"]
    assert "## Lyrics\n[Verse 1]\nWalking down the street" in lyrics
    for empty in ({"messages": []}, {"messages": [{"role": "user", "content": ""}]}):
        response = client.post(CHAT, headers=TEST_CLIENT_HEADERS, json=empty, timeout=30)
        assert response.status_code == 400 and response.json()["detail"] == NOTHING_ASKED


def test_flow_7_streamed_events_read_as_the_test_client_reads_them(server):
    content_parts, audio_url, roles, finish, comments = [], None, [], None, []
    with server.client.stream("POST", CHAT, headers=TEST_CLIENT_HEADERS, json=STREAMING, timeout=300) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith(": progress "):
                comments.append(line)
            if not line or not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                break
            chunk = json.loads(line[6:])
            delta = chunk["choices"][0]["delta"]
            finish = chunk["choices"][0].get("finish_reason") or finish
            if "role" in delta:
                roles.append(delta["role"])
            if "content" in delta and delta["content"]:
                content_parts.append(delta["content"])
            if "audio" in delta and delta["audio"]:
                audio_url = delta["audio"][0].get("audio_url", {}).get("url", "")
    assert roles == ["assistant"] and finish == "stop"
    assert "## Metadata" in "".join(content_parts)
    assert "progress" not in "".join(content_parts)  # progress never reaches the text clients join
    _, info = decoded(audio_url)
    assert abs(info.duration - 30) < 1.5
    assert comments and comments[-1] == ": progress 1.00 succeeded"
    fractions = [float(line.split()[2]) for line in comments]
    assert all(0.0 <= f <= 1.0 for f in fractions)


def test_flow_7_skill_cli_completion(server):
    # .claude/skills/acestep/scripts/acestep.sh, completion mode, caption + lyrics; the model is
    # its fallback id when /v1/models has no .data[0].id.
    payload = {
        "model": "acemusic/acestep-v15-turbo",
        "messages": [
            {"role": "user", "content": "<prompt>lofi chill beat</prompt><lyrics>[verse]\nla la</lyrics>"}
        ],
        "stream": False,
        "thinking": False,
        "use_format": False,
        "sample_mode": False,
        "use_cot_caption": True,
        "use_cot_language": True,
        "audio_config": {"format": "mp3", "vocal_language": "en", "duration": 10, "bpm": 90},
        "seed": 42,
        "batch_size": 2,
    }
    response = server.client.post(CHAT, headers=SKILL_HEADERS, json=payload, timeout=660)
    urls = audio_of(response)
    body = response.json()
    assert body["model"] == "acemusic/acestep-v15-turbo" and body["choices"][0]["finish_reason"] != "error"
    assert len(urls) == 2  # every clip of the batch; the CLI saves <id>_1, <id>_2
    assert all(abs(decoded(url)[1].duration - 10) < 1 for url in urls)
    # With a source file: a list content with an input_audio part and a task_type. A 25 s WAV is
    # a JSON body over the 4 MiB every other JSON route allows.
    source = wav_b64(25.0)
    assert len(source) > 4 * 2**20
    with_audio = payload | {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<prompt>lofi chill cover</prompt>"},
                    {"type": "input_audio", "input_audio": {"data": source, "format": "wav"}},
                ],
            }
        ],
        "task_type": "cover",
        "audio_cover_strength": 0.5,
        "batch_size": 1,
    }
    with_audio["audio_config"] = {"format": "wav", "vocal_language": "en"}
    response = server.client.post(CHAT, headers=SKILL_HEADERS, json=with_audio, timeout=660)
    (url,) = audio_of(response)
    head, info = decoded(url)
    assert (
        head == "data:audio/wav;base64" and abs(info.duration - 25) < 1
    )  # a cover keeps the source's length


def test_finding_the_key_guards_both_routes(server):
    for headers in ({}, {"Authorization": "Bearer wrong-key-000000"}):
        plain = {"Content-Type": "application/json"} | headers
        assert server.client.post(CHAT, headers=plain, json=INSTRUMENTAL).status_code == 401
        assert server.client.get("/api/v1/models", headers=headers).status_code == 401
    # No body token on chat (upstream's chat servers read none): a key-less header is refused.
    response = server.client.post(
        CHAT, headers={"Content-Type": "application/json"}, json=INSTRUMENTAL | {"ai_token": KEY}
    )
    assert response.status_code == 401


def _announced(server: Server, headers: dict) -> tuple[int | None, bytes]:
    """Only the head of a chat request whose body is announced, never sent: the guard's answer."""
    with connect(server.port, timeout=10) as sock:
        sock.sendall(head("POST", CHAT, server.port, {"Content-Type": "application/json"} | headers))
        return read_response(sock)


def test_finding_chat_bodies_are_bounded_before_they_are_read(server):
    # No header: a 401 at once, not after 190 MiB (chat has no body token to wait for).
    status, data = _announced(server, {"Content-Length": 190 * 2**20})
    assert status == 401 and b"Missing Authorization header" in data, data[:300]
    # With the key: two base64 uploads (100 MiB each by default) plus 4 MiB, and no more.
    status, data = _announced(server, {"Authorization": f"Bearer {KEY}", "Content-Length": 300 * 2**20})
    assert status == 413 and b"ACESTEP_MAX_UPLOAD_MB" in data, data[:300]


def test_finding_a_keyless_server_answers_chat_without_a_header(upstream_turbo, tmp_path):
    server = Server(upstream_turbo, tmp_path, dit="acestep-v15-turbo", ACESTEP_API_KEY="")
    try:
        payload = INSTRUMENTAL | {"audio_config": {"instrumental": True, "duration": 5}}
        response = server.client.post(CHAT, json=payload, timeout=300)
        assert len(audio_of(response)) == 1
    finally:
        server.stop()


def test_finding_base64_whitespace_is_sized_before_it_is_stripped(upstream_turbo, tmp_path):
    """A part that is mostly spaces is refused on its length, before any copy is made; line-wrapped
    base64 of a file within the limit still passes that check."""
    server = Server(upstream_turbo, tmp_path, dit="acestep-v15-turbo", ACESTEP_MAX_UPLOAD_MB="1")
    try:
        spaces = {"type": "input_audio", "input_audio": {"data": "AB " * 2**20, "format": "wav"}}
        response = server.post(CHAT, json=_audio_message(spaces))
        assert response.status_code == FAILURE_STATUS[RefusalCause.TOO_LARGE], response.text
        assert "messages[0].content[1].input_audio: upload too large" in response.json()["detail"]
        wrapped = "\n".join(textwrap.wrap(wav_b64(2.0), 76))
        part = {"type": "input_audio", "input_audio": {"data": wrapped, "format": "wav"}}
        response = server.post(CHAT, json=_audio_message(part) | {"task_type": "cover", "model": "nope"})
        assert response.status_code == FAILURE_STATUS[RefusalCause.UNKNOWN_MODEL]  # checked first
        # Decoded, saved and probed as a reference; only then does the task's own check refuse it.
        response = server.post(CHAT, json=_audio_message(part) | {"task_type": "bogus"})
        assert response.status_code == 400 and response.json()["detail"].startswith("task_type"), (
            response.text
        )
    finally:
        server.stop()


def test_finding_openrouter_model_list(server):
    body = server.get("/api/v1/models").json()
    assert body["object"] == "list"
    (entry,) = body["data"]
    assert entry["id"] == "acestep/acestep-v15-turbo"
    assert entry["input_modalities"] == ["text", "audio"] and entry["output_modalities"] == ["audio", "text"]
    assert set(entry["pricing"]) >= {"prompt", "completion", "request"}
    # /v1/models stays the inventory envelope.
    assert "models" in server.get("/v1/models").json()["data"]


def _audio_message(*parts: dict) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "a song"}, *parts]}]}


def test_finding_bad_input_audio_names_the_part(server):
    bad = {"type": "input_audio", "input_audio": {"data": "not base64 at all!", "format": "mp3"}}
    response = server.post(CHAT, json=_audio_message(bad))
    assert response.status_code == 400
    assert response.json()["detail"].startswith("messages[0].content[1].input_audio: ")
    text = {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"hello world" * 10).decode()}}
    response = server.post(CHAT, json=_audio_message(text))
    assert response.status_code == 415 and "messages[0].content[1].input_audio" in response.text
    no_comma = {"type": "input_audio", "input_audio": {"data": "data:audio/mp3;base64", "format": "mp3"}}
    response = server.post(CHAT, json=_audio_message(no_comma))
    assert response.status_code == 400 and "needs a comma" in response.json()["detail"]
    good = {"type": "input_audio", "input_audio": {"data": wav_b64(2.0), "format": "wav"}}
    response = server.post(CHAT, json=_audio_message(good, good, good))
    assert response.status_code == 400
    assert response.json()["detail"].startswith("messages[0].content[3].input_audio: at most 2")


def test_finding_a_huge_message_is_refused_before_it_is_searched(server):
    """An unclosed tag repeated a million times costs one length check, and the server keeps
    answering (upstream's tag rules would scan it once per tag)."""
    flood = {"messages": [{"role": "user", "content": "<prompt>" * 2**20}]}
    response = server.post(CHAT, json=flood)
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith("messages[0].content: the text is 8388608 characters")
    assert server.client.get("/health").status_code == 200


def test_finding_wrong_values_name_the_chat_field_and_unknown_models_are_refused(server):
    response = server.post(CHAT, json=INSTRUMENTAL | {"audio_config": {"bpm": 1000}})
    assert response.status_code == 400 and response.json()["detail"].startswith("audio_config.bpm: ")
    response = server.post(CHAT, json=INSTRUMENTAL | {"temperature": 3})
    assert response.status_code == 400 and "temperature" in response.text
    response = server.post(CHAT, json=INSTRUMENTAL | {"model": "acemusic/acestep-v15-base"})
    assert response.status_code == FAILURE_STATUS[RefusalCause.UNKNOWN_MODEL] == 400
    assert "acestep-v15-base" in response.text and "served models: acestep-v15-turbo" in response.text


def test_finding_absent_steps_are_the_models_default():
    """patches/0040: upstream's chat runs 8 steps whatever the model; here the variant's default."""
    base = detect_variant({"is_turbo": False}, "acestep-v15-base")
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(variant=base)))
    body = ChatCompletionRequest.model_validate(INSTRUMENTAL)
    values = _values(request, body, parse_messages(body.messages))
    assert values["inference_steps"] == base.default_steps == 50
    body = ChatCompletionRequest.model_validate(INSTRUMENTAL | {"inference_steps": 8})
    assert _values(request, body, parse_messages(body.messages))["inference_steps"] == 8
