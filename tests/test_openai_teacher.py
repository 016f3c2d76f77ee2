"""The OpenAI-compatible teacher against a loopback chat-completions server that this test starts
(127.0.0.1 only). The server answers like the symbolic teacher would, and injects rate limits, server
errors, timeouts and malformed bodies on a schedule."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llava_mini.world import read_split
from llava_mini.teacher import ResponseCache, generate_instruct_data
from llava_mini.teacher import (
    OpenAITeacher, SymbolicTeacher, TeacherBudgetExhausted, TeacherFatalError, teacher_from_env,
)
from llava_mini.world import generate_world

KEY = "sk-test-LOOPBACK-7f3a9c1e-do-not-leak"
MODEL = "loopback-gpt"
REPO = Path(__file__).resolve().parents[1]


class FakeServer:
    """Speaks just enough of POST /v1/chat/completions. `faults` maps request number (1-based) to one of
    429, 500, 502, "timeout", "bad_json", "no_choices", "html"."""

    def __init__(self, faults=None, delay=0.0, stall=1.5):
        self.faults = dict(faults or {})
        self.delay, self.stall = delay, stall
        self.requests = 0
        self.served_ok = 0
        self.lock = threading.Lock()
        self.symbolic = SymbolicTeacher(0)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    n = server.requests
                if self.path != "/v1/chat/completions":
                    return self.reply(404, {"error": {"message": "no such route"}})
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    # Echo the key back, as some servers do, to check the teacher redacts it.
                    return self.reply(401, {"error": {"message": f"bad key {self.headers.get('Authorization')}"}})
                fault = server.faults.get(n)
                if fault in (429, 500, 502):
                    return self.reply(fault, {"error": {"message": f"injected {fault}"}},
                                      headers={"retry-after": "0"} if fault == 429 else {})
                if fault == "timeout":
                    time.sleep(server.stall)
                    return self.reply(200, server.completion(body, n))
                if fault == "bad_json":
                    return self.raw(200, b'{"id": "x", "choices": [', "application/json")
                if fault == "html":
                    return self.raw(200, b"<html>gateway hiccup</html>", "text/html")
                if fault == "no_choices":
                    return self.reply(200, {"id": "x", "object": "chat.completion", "choices": []})
                time.sleep(server.delay)
                payload = server.completion(body, n)
                with server.lock:  # counted before the reply: a client that has its answer must see the count
                    server.served_ok += 1
                self.reply(200, payload)

            def reply(self, status, obj, headers=None):
                self.raw(status, json.dumps(obj).encode(), "application/json", headers)

            def raw(self, status, data, content_type, headers=None):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def completion(self, body, n):
        assert body["model"] == MODEL
        text = self.symbolic.complete(body["messages"])
        return {"id": f"c{n}", "object": "chat.completion", "created": 0, "model": MODEL,
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    generate_world(root, {"train": 8}, seed=5)
    return read_split(root, "train").records


@pytest.fixture(scope="module")
def reference(records):
    """What an offline run writes: the loopback server answers the same, so a run through it must match."""
    return generate_instruct_data(records, SymbolicTeacher(0), progress=False).records


def teacher(url, **kw):
    kw = {"model": MODEL, "base_url": url, "api_key": KEY, "timeout": 0.5, "backoff": 0.01, "max_backoff": 0.05, **kw}
    return OpenAITeacher(**kw)


FAULTS = {1: 429, 2: 429, 4: 500, 5: 502, 7: "timeout", 9: "bad_json", 11: "no_choices", 13: "html", 20: 500}


@pytest.mark.parametrize("workers", [1, 3])
def test_run_completes_through_faults(tmp_path, records, reference, workers):
    with FakeServer(FAULTS) as server:
        t = teacher(server.url)
        result = generate_instruct_data(records, t, cache_file=tmp_path / "cache.jsonl", out_file=tmp_path / "out.json",
                                        summary_file=tmp_path / "summary.json", progress=False, workers=workers)
    units = len(records) * 3
    s = result.summary
    assert s["missing"] == 0 and s["stopped_early"] is None and s["teacher_failures"] == {}
    assert result.records == reference  # nothing lost, nothing changed
    stats = s["teacher_stats"]
    assert stats["rate_limited"] == 2 and stats["server_error"] == 3 and stats["timeout"] == 1
    assert stats["malformed"] == 3  # truncated JSON, a body without choices, an HTML page
    assert stats["ok"] == units == server.served_ok  # each unit answered exactly once
    assert stats["requests"] == server.requests == units + len(FAULTS)
    assert len(ResponseCache(tmp_path / "cache.jsonl")) == units
    # A rerun is free: everything comes from the cache.
    with FakeServer() as server:
        again = generate_instruct_data(records, teacher(server.url), cache_file=tmp_path / "cache.jsonl", progress=False)
        assert server.requests == 0
    assert again.summary["cache_hits"] == units and again.records == reference
    assert_no_key_in(tmp_path)


def test_a_call_that_keeps_failing_is_counted_and_retried_next_run(tmp_path, records, reference):
    always = {n: 500 for n in range(1, 4)}  # the first call fails on all of its 3 attempts
    with FakeServer(always) as server:
        result = generate_instruct_data(records, teacher(server.url, max_retries=2), cache_file=tmp_path / "c.jsonl",
                                        progress=False)
    assert result.summary["teacher_failures"] == {"failed after retries": 1}
    assert result.summary["missing"] == 1 and result.summary["teacher_stats"]["gave_up"] == 1
    with FakeServer() as server:
        resumed = generate_instruct_data(records, teacher(server.url), cache_file=tmp_path / "c.jsonl", progress=False)
        assert server.served_ok == 1  # only the missing one is asked again
    assert resumed.records == reference


def test_request_budget(tmp_path, records):
    with FakeServer({2: 429}) as server:
        t = teacher(server.url, max_requests=5)
        result = generate_instruct_data(records, t, cache_file=tmp_path / "c.jsonl", progress=False)
        assert server.requests == 5
    assert result.summary["stopped_early"].startswith("request budget spent")
    assert result.summary["teacher_calls"] == 4 and len(result.records) == 4
    with pytest.raises(TeacherBudgetExhausted):
        t.complete([{"role": "user", "content": "x"}])


def test_bad_key_stops_the_run_without_leaking_it(tmp_path, records):
    with FakeServer() as server:
        wrong = OpenAITeacher(model=MODEL, base_url=server.url, api_key=KEY + "-wrong", backoff=0.01)
        with pytest.raises(TeacherFatalError) as e:
            generate_instruct_data(records, wrong, cache_file=tmp_path / "c.jsonl", progress=False)
        assert server.requests == 1  # no retries on a 401
    assert "401" in str(e.value) and KEY not in str(e.value) and "***" in str(e.value)
    assert KEY not in repr(wrong) and KEY not in wrong.identity


def test_environment_configuration(monkeypatch):
    for var in ("LLAVA_MINI_TEACHER_API_KEY", "OPENAI_API_KEY", "LLAVA_MINI_TEACHER_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    assert teacher_from_env() is None  # the notebook stays offline
    monkeypatch.setenv("LLAVA_MINI_TEACHER_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("LLAVA_MINI_TEACHER_MODEL", "llama3.1")
    t = teacher_from_env()
    assert t.model == "llama3.1" and t.base_url.startswith("http://127.0.0.1:9/v1")
    monkeypatch.delenv("LLAVA_MINI_TEACHER_MODEL")
    with pytest.raises(ValueError, match="LLAVA_MINI_TEACHER_MODEL"):
        OpenAITeacher()


RUN_SCRIPT = """
import sys
from llava_mini.world import read_split
from llava_mini.teacher import generate_instruct_data
from llava_mini.teacher import OpenAITeacher
records = read_split(sys.argv[1], "train").records
t = OpenAITeacher(timeout=5, backoff=0.01)  # url, model and key from the environment
generate_instruct_data(records, t, cache_file=sys.argv[2], out_file=sys.argv[3], progress=False)
"""


def test_resumes_after_being_killed(tmp_path, records, reference):
    world_root = Path(records[0].image_dir).parents[1]
    cache, out = tmp_path / "cache.jsonl", tmp_path / "out.json"
    units = len(records) * 3
    with FakeServer({3: 500, 6: 429}, delay=0.05) as server:
        env = {**os.environ, "PYTHONPATH": str(REPO), "LLAVA_MINI_TEACHER_API_KEY": KEY,
               "LLAVA_MINI_TEACHER_BASE_URL": server.url, "LLAVA_MINI_TEACHER_MODEL": MODEL}
        proc = subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, str(world_root), str(cache), str(out)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while server.served_ok < units // 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
        served_before = server.served_ok
        assert 0 < served_before < units and not out.exists()
        cached = len(ResponseCache(cache))
        assert served_before - 1 <= cached <= served_before  # at most the call in flight is lost

        result = generate_instruct_data(records, teacher(server.url), cache_file=cache, out_file=out, progress=False)
    assert result.summary["cache_hits"] == cached and result.summary["missing"] == 0
    assert result.records == reference  # nothing lost
    assert server.served_ok <= units + 1  # nothing asked twice, except perhaps the one in flight
    keys = [json.loads(line)["key"] for line in cache.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == units  # nothing duplicated
    assert_no_key_in(tmp_path)


def assert_no_key_in(folder: Path):
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert KEY.encode() not in p.read_bytes(), p
