"""The official openai and anthropic Python SDKs against the real gateway and the mock upstream.

Each test makes calls the way an application would (a console-issued key, `max_retries=0`) and
checks two things: the SDK gets a well-formed answer, and the call the console recorded carries
exactly the token usage the SDK saw (prompt, completion, cache and reasoning tokens).
Run with tests/sdk/run.sh (it builds the binaries and the virtual environment).
"""

import json
import os
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import anthropic
import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
TC_BIN = os.environ.get("TC_BIN", str(REPO / "target" / "debug" / "token-console"))
MOCK_BIN = os.environ.get("MOCK_BIN", str(REPO / "target" / "debug" / "mock-upstream"))
PROVIDER_KEY = "provider-secret-key-sdk"
DEADLINE_S = 30.0


def _ready_line(proc, prefix):
    """Reads the child's stdout until a line starting with `prefix`; keeps draining after."""
    found = {}
    event = threading.Event()

    def drain():
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            if not event.is_set() and line.startswith(prefix):
                found["line"] = line.strip()
                event.set()
        event.set()

    threading.Thread(target=drain, daemon=True).start()
    if not event.wait(DEADLINE_S) or "line" not in found:
        proc.kill()
        raise RuntimeError(f"{proc.args[0]} did not print {prefix!r}")
    return found["line"]


def _stop(proc):
    proc.kill()
    proc.wait(timeout=DEADLINE_S)


@pytest.fixture(scope="session")
def mock():
    for path in (TC_BIN, MOCK_BIN):
        assert Path(path).exists(), f"{path} is missing: cargo build --workspace --bins"
    proc = subprocess.Popen(
        [MOCK_BIN, "--port", "0", "--require-key", PROVIDER_KEY],
        stdout=subprocess.PIPE,
    )
    line = _ready_line(proc, "mock-upstream listening on ")
    yield line.removeprefix("mock-upstream listening on ").strip()
    _stop(proc)


@pytest.fixture(scope="session")
def gateway(mock, tmp_path_factory):
    """The gateway's base URL: port 0, a fresh SQLite file, both providers on the mock."""
    directory = tmp_path_factory.mktemp("token-console")
    config = directory / "config.yaml"
    config.write_text(
        "port: 0\n"
        f"database_url: sqlite://{directory / 'tc.db'}\n"
        "providers:\n"
        f'  - {{ name: mock-openai, kind: openai, base_url: "{mock}/v1", api_key: "{PROVIDER_KEY}",'
        ' models: ["gpt-*", "text-embedding-*", "mock-*"] }\n'
        f'  - {{ name: mock-anthropic, kind: anthropic, base_url: "{mock}", api_key: "{PROVIDER_KEY}",'
        ' models: ["claude-*", "mock-*"] }\n'
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "CONSOLE_ADMIN_KEY")
        and not k.startswith("CONSOLE_")
    }
    with open(directory / "stderr.log", "wb") as stderr:
        proc = subprocess.Popen(
            [TC_BIN, "--config", str(config)],
            cwd=directory,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    line = _ready_line(proc, "token-console ready ")
    fields = dict(part.split("=", 1) for part in line.split()[2:])
    yield fields["gateway"]
    _stop(proc)


def _api(gw, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{gw}{path}", data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=DEADLINE_S) as response:
        answer = json.load(response)
    assert answer["code"] == 0, answer
    return answer["data"]


class Console:
    """The console of the gateway under test, and how many calls it should have recorded."""

    def __init__(self, gw):
        self.gw = gw
        self.calls = 0

    def newest(self, calls_made=1):
        """The newest log row, after the `calls_made` new calls are all recorded (and no more)."""
        self.calls += calls_made
        start = time.monotonic()
        while True:
            stats = _api(self.gw, "GET", "/api/console/stats")
            if stats["api_call_count"] >= self.calls:
                break
            assert time.monotonic() - start < DEADLINE_S, f"only {stats['api_call_count']} recorded"
            time.sleep(0.01)
        assert stats["api_call_count"] == self.calls, "every call is recorded exactly once"
        return _api(self.gw, "GET", "/api/console/logs?limit=1")[0]


@pytest.fixture(scope="session")
def console(gateway):
    return Console(gateway)


@pytest.fixture(scope="session")
def key(gateway):
    return _api(gateway, "POST", "/api/console/keys", {"name": "sdk-tests"})["value"]


@pytest.fixture(scope="session")
def oa(gateway, key):
    return openai.OpenAI(api_key=key, base_url=f"{gateway}/v1", max_retries=0)


@pytest.fixture(scope="session")
def an(gateway, key):
    return anthropic.Anthropic(api_key=key, base_url=gateway, max_retries=0)


def mock_text(n):
    return " ".join(f"tok{i}" for i in range(n))


def mock_prompt(text):
    return 10 + len(text.split())


def tokens(row):
    return (
        row["prompt_tokens"],
        row["completion_tokens"],
        row["cache_read_tokens"],
        row["cache_creation_tokens"],
        row["reasoning_tokens"],
        row["tokens"],
    )


def openai_usage(usage):
    """An OpenAI chat/completions usage as the recorded fields."""
    return (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.prompt_tokens_details.cached_tokens,
        0,
        usage.completion_tokens_details.reasoning_tokens,
        usage.total_tokens,
    )


def responses_usage(usage):
    return (
        usage.input_tokens,
        usage.output_tokens,
        usage.input_tokens_details.cached_tokens,
        0,
        usage.output_tokens_details.reasoning_tokens,
        usage.total_tokens,
    )


def anthropic_usage(usage):
    """An Anthropic usage as the recorded fields: input_tokens excludes the cache reads and
    writes, which the recorded prompt_tokens include."""
    prompt = usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    return (
        prompt,
        usage.output_tokens,
        usage.cache_read_input_tokens,
        usage.cache_creation_input_tokens,
        0,
        prompt + usage.output_tokens,
    )


def assert_exact(row, seen, *, stream):
    assert row["status"] == 200, row
    assert tokens(row) == seen, row
    assert row["estimated"] is False, row
    assert row["stream"] is stream, row


def test_chat_completions(oa, console):
    question = "what is a token console"
    reply = oa.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": question}], max_tokens=12
    )
    assert reply.choices[0].message.content == mock_text(12)
    assert reply.usage.prompt_tokens == mock_prompt(question)
    assert_exact(console.newest(), openai_usage(reply.usage), stream=False)


def test_chat_stream_without_usage_hides_the_extra_chunk(oa, console):
    question = "stream me an answer please"
    chunks = list(
        oa.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": question}],
            max_tokens=9,
            stream=True,
        )
    )
    assert chunks, "the stream had chunks"
    assert all(chunk.choices for chunk in chunks), "no chunk with empty choices reaches the SDK"
    assert all(chunk.usage is None for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == mock_text(9)
    # The SDK saw no usage; the mock's is prompt = 10 + words, completion = max_tokens, with
    # 2 cached and 1 reasoning token.
    prompt = mock_prompt(question)
    assert_exact(console.newest(), (prompt, 9, 2, 0, 1, prompt + 9), stream=True)


def test_chat_stream_with_usage_passes_the_chunk_through(oa, console):
    question = "count my tokens while streaming"
    chunks = list(
        oa.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": question}],
            max_tokens=7,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage_chunks = [c for c in chunks if not c.choices]
    assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0]
    usage = usage_chunks[0].usage
    assert usage.prompt_tokens == mock_prompt(question)
    assert_exact(console.newest(), openai_usage(usage), stream=True)


def test_chat_stream_helper(oa, console):
    with oa.chat.completions.stream(
        model="gpt-4o",
        messages=[{"role": "user", "content": "use the stream helper"}],
        max_tokens=20,
        stream_options={"include_usage": True},
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == mock_text(20)
    assert_exact(console.newest(), openai_usage(final.usage), stream=True)


def test_responses(oa, console):
    question = "answer through the responses api"
    reply = oa.responses.create(model="gpt-4o", input=question, max_output_tokens=16)
    assert reply.output_text == mock_text(16)
    assert reply.usage.input_tokens == mock_prompt(question)
    assert_exact(console.newest(), responses_usage(reply.usage), stream=False)


def test_responses_stream(oa, console):
    events = list(
        oa.responses.create(
            model="gpt-4o", input="stream the responses api", max_output_tokens=5, stream=True
        )
    )
    completed = [e for e in events if e.type == "response.completed"]
    assert len(completed) == 1
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == mock_text(5)
    assert_exact(console.newest(), responses_usage(completed[0].response.usage), stream=True)


def test_responses_stream_helper(oa, console):
    with oa.responses.stream(model="gpt-4o", input="the responses stream helper") as stream:
        final = stream.get_final_response()
    assert final.output_text == mock_text(20)
    assert_exact(console.newest(), responses_usage(final.usage), stream=True)


def test_responses_stream_helper_sees_the_full_event_sequence(oa, console):
    """The helper's events in the order OpenAI sends them, each numbered, one item and part."""
    with oa.responses.stream(
        model="gpt-4o", input="every event of the stream", max_output_tokens=3
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == final.output_text == mock_text(3)
    item = next(e for e in events if e.type == "response.output_item.done").item
    assert item.id == final.output[0].id and item.status == "completed"
    assert final.id.startswith("resp_") and final.status == "completed"
    assert_exact(console.newest(), responses_usage(final.usage), stream=True)


def test_embeddings(oa, console):
    texts = ["embed these words", "and these"]
    reply = oa.embeddings.create(model="text-embedding-3-small", input=texts)
    assert len(reply.data) == 2 and all(len(d.embedding) == 16 for d in reply.data)
    assert reply.usage.prompt_tokens == 10 + 5
    row = console.newest()
    seen = (reply.usage.prompt_tokens, 0, 0, 0, 0, reply.usage.total_tokens)
    assert_exact(row, seen, stream=False)


def test_messages(an, console):
    question = "hello claude through the gateway"
    reply = an.messages.create(
        model="claude-3-haiku", max_tokens=14, messages=[{"role": "user", "content": question}]
    )
    assert reply.content[0].text == mock_text(14)
    assert reply.usage.input_tokens == mock_prompt(question)
    assert_exact(console.newest(), anthropic_usage(reply.usage), stream=False)


def test_messages_stream(an, console):
    events = list(
        an.messages.create(
            model="claude-3-haiku",
            max_tokens=6,
            messages=[{"role": "user", "content": "stream raw events"}],
            stream=True,
        )
    )
    start = next(e for e in events if e.type == "message_start").message.usage
    delta = [e for e in events if e.type == "message_delta"][-1].usage
    text = "".join(
        e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert text == mock_text(6)
    prompt = start.input_tokens + start.cache_read_input_tokens + start.cache_creation_input_tokens
    seen = (
        prompt,
        delta.output_tokens,
        start.cache_read_input_tokens,
        start.cache_creation_input_tokens,
        0,
        prompt + delta.output_tokens,
    )
    assert_exact(console.newest(), seen, stream=True)


def test_messages_stream_helper(an, console):
    with an.messages.stream(
        model="claude-3-haiku",
        max_tokens=11,
        messages=[{"role": "user", "content": "use the messages stream helper"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == mock_text(11)
    assert_exact(console.newest(), anthropic_usage(final.usage), stream=True)


def test_model_listing(oa, an, console):
    # The mock lists mock-gpt and mock-claude; both providers' patterns admit them.
    assert sorted(m.id for m in oa.models.list()) == ["mock-claude", "mock-gpt"]
    row = console.newest()
    assert (row["endpoint"], row["status"], row["tokens"]) == ("/v1/models", 200, 0)
    assert sorted(m.id for m in an.models.list()) == ["mock-claude", "mock-gpt"]
    assert console.newest()["endpoint"] == "/v1/models"


def test_no_usage_upstream_is_estimated(oa, an, console):
    reply = oa.chat.completions.create(
        model="mock-no-usage", messages=[{"role": "user", "content": "no usage here"}], max_tokens=8
    )
    assert reply.usage is None
    chunks = list(
        oa.chat.completions.create(
            model="mock-no-usage",
            messages=[{"role": "user", "content": "no usage here either"}],
            max_tokens=8,
            stream=True,
        )
    )
    assert all(chunk.choices for chunk in chunks)
    message = an.messages.create(
        model="mock-no-usage", max_tokens=8, messages=[{"role": "user", "content": "nor here"}]
    )
    assert message.content[0].text == mock_text(8)
    console.newest(3)
    for row in _api(console.gw, "GET", "/api/console/logs?limit=3"):
        assert row["estimated"] is True, row
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0, row
        assert row["tokens"] == row["prompt_tokens"] + row["completion_tokens"], row


def test_errors_reach_the_sdks_as_their_own_exceptions(gateway, console):
    bad_oa = openai.OpenAI(api_key="sk-tc-not-a-key", base_url=f"{gateway}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad_oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    bad_an = anthropic.Anthropic(api_key="sk-tc-not-a-key", base_url=gateway, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        bad_an.messages.create(
            model="claude-3-haiku", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["error"]["type"] == "authentication_error"
    # Calls without a valid key are counted in /metrics, not recorded as log rows.
    with urllib.request.urlopen(f"{gateway}/metrics", timeout=DEADLINE_S) as response:
        metrics = response.read().decode()
    unauthenticated = sum(
        int(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("token_console_unauthenticated_requests_total{")
    )
    assert unauthenticated >= 2, metrics
    stats = _api(console.gw, "GET", "/api/console/stats")
    assert stats["api_call_count"] == console.calls, stats


def _answer(gw, path):
    with urllib.request.urlopen(f"{gw}{path}", timeout=DEADLINE_S) as response:
        return json.load(response)


def _first_event(gw, path, make_call):
    """The first `data:` event of a live stream, which shows calls recorded after it opened:
    `make_call` makes one once the stream's headers have arrived."""
    with urllib.request.urlopen(f"{gw}{path}", timeout=DEADLINE_S) as response:
        make_call()
        for line in response:
            if line.startswith(b"data:"):
                return json.loads(line[5:])
    raise AssertionError(f"{path} ended without an event")


def test_end_users_the_sdks_name_are_broken_down_by_usage(oa, an, console):
    """The SDKs' own ways of naming the end user (OpenAI `user` and `safety_identifier`,
    Anthropic `metadata.user_id`) reach the record and `/usage`."""
    oa.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], user="sdk-alice"
    )
    oa.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"safety_identifier": "sdk-bob"},
    )
    an.messages.create(
        model="claude-3-haiku",
        max_tokens=5,
        messages=[{"role": "user", "content": "hi"}],
        metadata={"user_id": "sdk-carol"},
    )
    row = console.newest(3)
    seen = (row["user"], row["provider"], row["source"])
    assert seen == ("sdk-carol", "mock-anthropic", "gateway"), row
    rows = _api(console.gw, "GET", "/api/console/usage?group_by=user&limit=1000")["rows"]
    got = {r["user"]: r["calls"] for r in rows if r["user"].startswith("sdk-")}
    assert got == {"sdk-alice": 1, "sdk-bob": 1, "sdk-carol": 1}, rows


def test_console_answers_agree_with_the_openapi_document(gateway, oa, an, console):
    """Every GET operation of the console API, answered from a store holding the calls of the
    tests above, validates against the schema the served document gives for it; every object
    schema is closed, so a field the document does not name fails."""
    from jsonschema import Draft202012Validator

    oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "agree"}])
    an.messages.create(
        model="claude-3-haiku", max_tokens=5, messages=[{"role": "user", "content": "agree"}]
    )
    console.newest(2)
    key_id = _api(gateway, "GET", "/api/console/keys")[0]["id"]
    doc = _answer(gateway, "/api/console/openapi.json")

    def validate(instance, schema, what):
        root = dict(schema, components=doc["components"])
        errors = sorted(Draft202012Validator(root).iter_errors(instance), key=str)
        assert not errors, f"{what}: {errors[0].message} at {list(errors[0].absolute_path)}"

    for name, schema in doc["components"]["schemas"].items():
        if "properties" in schema:
            assert schema.get("additionalProperties") is False, f"{name} is not closed"

    asked = {
        "/api/console/stats": [f"?key_id={key_id}", "?from=2020-01-01T00:00:00Z", ""],
        "/api/console/usage-trend": ["?days=3", ""],
        "/api/console/usage": [
            "",
            "?group_by=user,day",
            f"?group_by=key,hour&key_id={key_id}",
            "?group_by=client,provider&order_by=calls",
        ],
        "/api/console/logs": ["?limit=5", "?status=2xx&kind=call", ""],
        "/api/console/keys": [""],
        "/api/console/export": ["?format=json"],
        "/api/console/openapi.json": [""],
        "/api/console/anomalies": ["?hours=2", ""],
        "/api/console/alerts": ["?limit=5"],
        "/api/console/sources": ["?days=3", ""],
    }
    # Nothing anomalous happens here and no alerts are configured: their rows are checked
    # against the same schemas by the Rust suite (tests/e2e/alerts.rs), here only the envelope.
    may_be_empty = {"/api/console/anomalies", "/api/console/alerts"}
    gets = {path for path, ops in doc["paths"].items() if "get" in ops}
    assert gets == set(asked) | {"/api/console/logs/stream"}, gets
    for path, queries in asked.items():
        schema = doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"][
            "schema"
        ]
        for query in queries:
            answer = _answer(gateway, path + query)
            validate(answer, schema, path + query)
            data = answer.get("data", answer)
            assert data or path in may_be_empty, f"{path}{query} answered from a store with data"
    def call():
        oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "live"}])

    row = _first_event(gateway, "/api/console/logs/stream", call)
    console.newest(1)
    validate(row, {"$ref": "#/components/schemas/LogRow"}, "a live-log event")
    stats = _api(gateway, "GET", "/api/console/stats")
    assert stats["models"] and stats["api_call_count"] == console.calls
