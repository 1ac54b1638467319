"""The endpoint explainer and judge against a stub server speaking the OpenAI chat protocol on 127.0.0.1:
requests are well formed, answers parsed in order, failures named."""

from __future__ import annotations

import math

import pytest

from mechscope.errors import UsageError
from mechscope.explain.endpoint import Endpoint, EndpointError, completions_url
from tests.helpers_explain import Stub


@pytest.fixture
def stub():
    s = Stub()
    yield s
    s.server.shutdown()
    s.server.server_close()


def test_write_sends_chat_completions_and_keeps_the_order(stub, monkeypatch):
    monkeypatch.setenv("STUB_KEY", "sekret")
    ep = Endpoint(stub.url + "/v1", "tiny-model", api_key_env="STUB_KEY", concurrency=3)
    prompts = [f"prompt {i}" for i in range(7)]
    assert ep.write(prompts, max_new_tokens=17) == [f"about prompt {i}" for i in range(7)]
    assert len(stub.seen) == 7
    for path, headers, body in stub.seen:
        assert path == "/v1/chat/completions"
        assert headers["Authorization"] == "Bearer sekret" and headers["Content-Type"] == "application/json"
        assert body["model"] == "tiny-model" and body["max_tokens"] == 17 and body["temperature"] == 0
        assert [m["role"] for m in body["messages"]] == ["user"] and "logprobs" not in body
    assert sorted(b["messages"][0]["content"] for _, _, b in stub.seen) == sorted(prompts)


def test_p_yes_reads_the_first_tokens_logprobs(stub):
    ep = Endpoint(stub.url, "m")
    got = ep.p_yes(["say yes", "say nothing"])
    for y, p in zip((-0.2, -2.0), got):
        yes = math.exp(y) + math.exp(y - 1.0)
        assert p == pytest.approx(yes / (yes + math.exp(-1.0)))
    assert got[0] > 0.5 > got[1]
    body = stub.seen[0][2]
    assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20
    assert "Authorization" not in stub.seen[0][1]


@pytest.mark.parametrize(
    "mode,match",
    [
        ("500", "HTTP 500.*model exploded"),
        ("garbage", "not JSON"),
        ("nologprobs", "top_logprobs"),
        ("neither", "neither 'yes' nor 'no'"),
    ],
)
def test_bad_answers_are_named(stub, mode, match):
    stub.mode = mode
    with pytest.raises(EndpointError, match=match):
        Endpoint(stub.url, "m", concurrency=1).p_yes(["q"])


def test_a_slow_server_and_a_missing_one_are_named(stub):
    stub.mode = "slow"
    with pytest.raises(EndpointError, match="within 0.2s.*`timeout`"):
        Endpoint(stub.url, "m", timeout=0.2).write(["q"], 4)
    port = stub.server.server_address[1]
    stub.server.shutdown()
    stub.server.server_close()
    with pytest.raises(EndpointError, match="cannot reach"):
        Endpoint(f"http://127.0.0.1:{port}", "m").write(["q"], 4)


def test_bad_settings_are_refused_before_any_request(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(UsageError, match="`api_key_env` names NO_SUCH_KEY_VAR"):
        Endpoint("http://127.0.0.1:9", "m", api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(UsageError, match="`endpoint` 'localhost:8000' is not an http"):
        Endpoint("localhost:8000", "m")
    with pytest.raises(UsageError, match="`endpoint_model`"):
        Endpoint("http://127.0.0.1:9", "")
    assert completions_url("http://h:1/") == "http://h:1/v1/chat/completions"
    assert completions_url("https://h/v1/") == "https://h/v1/chat/completions"
