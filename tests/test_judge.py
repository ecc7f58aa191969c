"""Judges: reply parsing, a local HTTP server for the OpenAI-compatible judge, the weak local judge, win rates."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from matsteer.errors import ConfigError, DataError
from matsteer.eval.judge_prompts import judge_prompt, parse_scores
from matsteer.eval.judges import JudgeError, StubJudge
from matsteer.eval.local_judge import LocalHFJudge
from matsteer.eval.openai_judge import OpenAICompatibleJudge
from matsteer.eval.pairwise import WinRate, pairwise_win_rate

ATTRS = ["helpfulness", "coherence"]
KEY_ENV = "MATSTEER_TEST_JUDGE_KEY"
SECRET = "sk-test-5ecr3t-value-0123456789"


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    "reply",
    [
        '{"helpfulness": 3, "coherence": 4}',
        '```json\n{"helpfulness": 3, "coherence": 4}\n```',
        'Sure! Here are my scores: {"Helpfulness": "3", "COHERENCE": 4.0}. Hope this helps {really}.',
        '{"scores": {"helpfulness": 3, "coherence": {"score": 4, "reason": "clear"}}}',
        '{"helpfulness": "3/4", "coherence": "4/4"}',
        "helpfulness: 3\ncoherence = 4",
    ],
)
def test_parse_scores_variants(reply):
    assert parse_scores(reply, ATTRS, (0, 4)) == {"helpfulness": 3.0, "coherence": 4.0}


@pytest.mark.parametrize(
    "reply", ["", "I cannot rate this.", '{"helpfulness": 3}', '{"helpfulness": 3, "coherence": 9}']
)
def test_parse_scores_rejects(reply):
    with pytest.raises(JudgeError):
        parse_scores(reply, ATTRS, (0, 4))


def test_judge_prompt_mentions_everything():
    text = judge_prompt("What is 2+2?", "4", ATTRS, (0, 4))
    assert "What is 2+2?" in text and "from 0 (lowest) to 4 (highest)" in text
    assert '"helpfulness": <score>' in text and "- coherence:" in text


# ------------------------------------------------------------------ stub judge and win rates


def test_stub_judge_deterministic():
    j = StubJudge()
    s = j.score("p", "r", ATTRS)
    assert s == StubJudge().score("p", "r", ATTRS)
    assert list(s) == ATTRS and all(v in (0.0, 1.0, 2.0, 3.0, 4.0) for v in s.values())
    assert j.score("p", "another response", ATTRS) != s or j.score("p2", "r", ATTRS) != s
    f = StubJudge(lambda p, r, a: float(len(r)) % 5)
    assert f.score_many(["a", "b"], ["xx", "xyz"], ["helpfulness"]) == [
        {"helpfulness": 2.0},
        {"helpfulness": 3.0},
    ]
    with pytest.raises(DataError):
        f.score_many(["a"], [], ["helpfulness"])
    with pytest.raises(ConfigError):
        j.score("p", "r", "helpfulness")


def test_pairwise_win_rate_counts():
    a = [{"h": 4, "c": 2}, {"h": 1, "c": 1}, {"h": 2, "c": 2}, {"h": 3, "c": 3}]
    b = [{"h": 3, "c": 2}, {"h": 2, "c": 2}, {"h": 3, "c": 1}, {"h": 0, "c": 0}]
    r = pairwise_win_rate(a, b)
    assert r == WinRate(win=2, loss=1, tie=1, n=4)
    assert r.win_rate == 0.5 and r.loss_rate == 0.25 and r.tie_rate == 0.25
    assert r.decisive_win_rate == pytest.approx(2 / 3) and r.win_rate_half_ties == 0.625
    assert pairwise_win_rate(a, b, attributes=["h"]) == WinRate(2, 2, 0, 4)
    assert pairwise_win_rate(a, b, tolerance=0.5) == WinRate(1, 1, 2, 4)
    with pytest.raises(DataError):
        pairwise_win_rate(a, b[:3])
    with pytest.raises(DataError):
        pairwise_win_rate([{"h": 1}], [{"c": 1}])
    judge = StubJudge()
    sa = judge.score_many(["p1", "p2"], ["r1", "r2"], ATTRS)
    assert pairwise_win_rate(sa, sa) == WinRate(0, 0, 2, 2)


# ------------------------------------------------------------------ OpenAI-compatible judge on a local server


class _Server:
    """A scripted chat-completions server on 127.0.0.1: each request pops the next (status, body, delay)."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                outer.requests.append(
                    {
                        "path": self.path,
                        # HTTP header names are case-insensitive; clients differ in how they spell them.
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": json.loads(self.rfile.read(length)),
                    }
                )
                if not outer.script:  # bounded: never more requests than scripted
                    status, body, delay = 599, "script exhausted", 0.0
                else:
                    status, body, delay = outer.script.pop(0)
                time.sleep(delay)
                payload = body if isinstance(body, bytes) else str(body).encode()
                try:
                    self.send_response(status)
                    if status == 429:
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.httpd.handle_error = lambda *args: None
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _completion(content: str) -> str:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})


OK = (200, _completion('{"helpfulness": 3, "coherence": 2}'), 0.0)


@pytest.fixture
def server_factory(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv(KEY_ENV, SECRET)
    servers: list[_Server] = []

    def make(script):
        servers.append(_Server(script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _judge(server, **kw):
    sleeps: list[float] = []
    kw.setdefault("api_key_env", KEY_ENV)
    j = OpenAICompatibleJudge(
        server.base_url, "judge-model", timeout=kw.pop("timeout", 5), backoff=0.01, sleep=sleeps.append, **kw
    )
    return j, sleeps


def _assert_no_secret(*objects):
    for obj in objects:
        assert SECRET not in str(obj) and SECRET not in repr(obj)


def test_openai_judge_success(server_factory):
    srv = server_factory([OK])
    j, sleeps = _judge(srv)
    assert j.score("What is 2+2?", "4", ATTRS) == {"helpfulness": 3.0, "coherence": 2.0}
    (req,) = srv.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == f"Bearer {SECRET}"
    assert req["body"]["model"] == "judge-model" and req["body"]["temperature"] == 0.0
    assert "What is 2+2?" in req["body"]["messages"][-1]["content"]
    assert sleeps == []
    _assert_no_secret(j, vars(j))


def test_openai_judge_retries_500_then_200(server_factory):
    srv = server_factory([(500, "boom", 0.0), (429, "slow down", 0.0), OK])
    j, sleeps = _judge(srv, max_retries=3)
    assert j.score("p", "r", ATTRS) == {"helpfulness": 3.0, "coherence": 2.0}
    assert len(srv.requests) == 3
    assert sleeps == [0.01, 0.02]  # exponential backoff (Retry-After: 0 does not shorten it)


def test_openai_judge_timeout_then_success(server_factory):
    srv = server_factory([(200, _completion('{"helpfulness": 0, "coherence": 0}'), 1.0), OK])
    j, sleeps = _judge(srv, timeout=0.25, max_retries=1)
    assert j.score("p", "r", ATTRS) == {"helpfulness": 3.0, "coherence": 2.0}
    assert len(srv.requests) == 2 and len(sleeps) == 1


def test_openai_judge_gives_up_after_retries_without_leaking_key(server_factory):
    srv = server_factory([(503, f"overloaded, your key {SECRET}", 0.0)] * 3)
    j, sleeps = _judge(srv, max_retries=2)
    with pytest.raises(JudgeError) as info:
        j.score("p", "r", ATTRS)
    assert len(srv.requests) == 3 and len(sleeps) == 2
    assert "3 attempt" in str(info.value) and "503" in str(info.value)
    _assert_no_secret(info.value, info.value.args, info.value.__cause__, info.value.__context__)


def test_openai_judge_client_error_fails_fast(server_factory):
    srv = server_factory([(401, json.dumps({"error": f"invalid key {SECRET}"}), 0.0)])
    j, sleeps = _judge(srv, max_retries=3)
    with pytest.raises(JudgeError) as info:
        j.score("p", "r", ATTRS)
    assert len(srv.requests) == 1 and sleeps == []
    assert "401" in str(info.value) and "***" in str(info.value)
    _assert_no_secret(info.value, info.value.args, info.value.__cause__, info.value.__context__)


def test_openai_judge_unparseable_reply(server_factory):
    srv = server_factory([(200, _completion("It is pretty good."), 0.0), (200, "not json at all", 0.0)])
    j, _ = _judge(srv, max_retries=1)
    with pytest.raises(JudgeError, match="failed after 2 attempt"):
        j.score("p", "r", ATTRS)


def test_openai_judge_key_handling(server_factory, monkeypatch):
    srv = server_factory([OK])
    j, _ = _judge(srv)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ConfigError, match=KEY_ENV):
        j.score("p", "r", ATTRS)
    assert srv.requests == []
    keyless, _ = _judge(srv, api_key_env=None)
    keyless.score("p", "r", ATTRS)
    assert "authorization" not in srv.requests[0]["headers"]
    with pytest.raises(ConfigError):
        OpenAICompatibleJudge("http://user:pw@127.0.0.1:1/v1", "m")
    with pytest.raises(ConfigError):
        OpenAICompatibleJudge("ftp://example.org", "m")


# ------------------------------------------------------------------ local weak judge


def _digit_tokenizer() -> PreTrainedTokenizerFast:
    words = "rate the response for helpfulness coherence on a scale from to lowest highest prompt reply with single digit rating".split()
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + [str(d) for d in range(10)] + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def test_local_hf_judge():
    tok = _digit_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    j = LocalHFJudge(model, tok)
    assert j.weak and j.name == "smollm2-135m-instruct (weak judge)" and j.scale == (1.0, 5.0)
    s = j.score("rate the prompt", "a single reply", ATTRS)
    assert list(s) == ATTRS and all(1.0 <= v <= 5.0 for v in s.values())
    assert s == j.score("rate the prompt", "a single reply", ATTRS)
    # The score is the expected rating under the model's next-token probabilities of "1".."5".
    text = j.rating_prompt("rate the prompt", "a single reply", "coherence")
    with torch.no_grad():
        logits = model(input_ids=tok(text, return_tensors="pt")["input_ids"]).logits[0, -1]
    ids = [tok.convert_tokens_to_ids(str(k)) for k in range(1, 6)]
    p = torch.softmax(logits[ids], 0)
    assert s["coherence"] == pytest.approx(float(p @ torch.arange(1.0, 6.0)), abs=1e-5)
    with pytest.raises(ConfigError):
        LocalHFJudge(model, tok, scale=(1, 10))


def test_openai_judge_without_the_package_names_the_extra(server_factory, monkeypatch):
    srv = server_factory([OK])
    j, _ = _judge(srv)
    monkeypatch.setitem(sys.modules, "openai", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"matsteer\[judge\]"):
        j.score("p", "r", ATTRS)
    assert srv.requests == []


def test_openai_judge_json_mode_and_settings_reach_the_server(server_factory):
    srv = server_factory([OK])
    j, _ = _judge(srv, json_mode=True, max_tokens=32, temperature=0.5)
    j.score("p", "r", ATTRS)
    body = srv.requests[0]["body"]
    assert body["response_format"] == {"type": "json_object"} and body["max_tokens"] == 32
    assert body["temperature"] == 0.5 and body["messages"][0]["role"] == "system"
