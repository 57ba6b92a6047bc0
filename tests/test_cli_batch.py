"""``routerctl batch run`` end to end: real worker processes, interruptions, resume, order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from router_jobs.batch.lines import LineError, parse_line
from router_jobs.batch.runner import default_batch_id, line_job_id
from tests.workerpool import WorkerPool, fake_key, write_keys

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def env(redis_url: str) -> Iterator[dict[str, str]]:
    # 2 keys x 40 requests per second: a 300-line batch takes a few seconds, long enough to
    # interrupt it twice
    limit = {"windows": [{"limit": 40, "seconds": 1}]}
    keys = write_keys([fake_key("fake-1", **limit), fake_key("fake-2", **limit)])
    environ = {"REDIS_URL": redis_url, "ROUTER_NAMESPACE": f"t{uuid.uuid4().hex[:10]}", "ROUTER_KEYS_FILE": str(keys),
               "SECRET_STORE_TYPE": "env", "API_KEY_FAKE_1": "fake-secret-1", "API_KEY_FAKE_2": "fake-secret-2"}
    with WorkerPool(environ, processes=2, threads=4):
        yield environ


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def start_batch(env: dict[str, str], src: Path, out: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "cli.main", "batch", "run", str(src), "--out", str(out), "--quiet",
            "--max-in-flight", "32"]
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(argv, env=full, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def interrupt_after(proc: subprocess.Popen[bytes], out: Path, lines: int, sig: int) -> int:
    deadline = time.monotonic() + 60
    while count_lines(out) < lines and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the batch finished before it could be interrupted"
    proc.send_signal(sig)
    return proc.wait(30)


@pytest.mark.e2e
@pytest.mark.slow
def test_interrupted_batch_resumes_with_each_line_once(env: dict[str, str], tmp_path: Path) -> None:
    src, out = tmp_path / "prompts.jsonl", tmp_path / "results.jsonl"
    with src.open("w") as fh:
        for i in range(1, 301):
            fh.write(json.dumps({"custom_id": f"r{i}", "prompt": f"prompt number {i}"}) + "\n")
    # Ctrl-C: exit 130 with a resume hint
    first = start_batch(env, src, out)
    assert interrupt_after(first, out, 40, signal.SIGINT) == 130
    assert b"run the same command again" in (first.stderr.read() if first.stderr else b"")
    # a crash: no chance to clean up (a half-written line is possible)
    second = start_batch(env, src, out)
    assert interrupt_after(second, out, count_lines(out) + 60, signal.SIGKILL) == -signal.SIGKILL
    before = count_lines(out)
    assert 100 <= before < 300
    result = CliRunner().invoke(cli, ["batch", "run", str(src), "--out", str(out), "--json"], env=env)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["done"] == 300 and summary["failed"] == 0 and summary["skipped"] >= before - 1

    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["line"] for r in records) == list(range(1, 301))  # each line exactly once
    batch_id = default_batch_id(src, out)
    for r in records:
        assert r["status"] == "succeeded", r
        assert r["custom_id"] == f"r{r['line']}"
        assert r["content"] == f"echo: prompt number {r['line']}"
        assert r["job_id"] == line_job_id(env["ROUTER_NAMESPACE"], batch_id, r["line"])
    status = json.loads(CliRunner().invoke(cli, ["batch", "status", batch_id, "--json"], env=env).stdout)
    assert (status["done"], status["failed"], status["pending"], status["state"]) == (300, 0, 0, "finished")


@pytest.mark.e2e
def test_ordered_output_and_both_input_forms(env: dict[str, str], tmp_path: Path) -> None:
    src, out = tmp_path / "mixed.jsonl", tmp_path / "out.jsonl"
    lines: list[str] = []
    for i in range(30):
        if i % 3 == 0:  # OpenAI Batch API form
            lines.append(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                     "body": {"model": "fake-model", "max_tokens": 50, "messages": [
                                         {"role": "system", "content": "be short"},
                                         {"role": "user", "content": f"batch api {i}"}]}}))
        elif i % 3 == 1:  # cookbook parallel-processor form: a request body per line
            lines.append(json.dumps({"model": "fake-model", "temperature": 0.2, "max_tokens": 20,
                                     "messages": [{"role": "user", "content": [{"type": "text", "text": f"book {i}"}]}],
                                     "metadata": {"row_id": i}}))
        else:
            lines.append(json.dumps({"prompt": f"plain {i}"}))
    lines.insert(5, "")  # blank: no output
    lines.insert(10, "{not json")
    lines.insert(20, json.dumps({"custom_id": "emb", "url": "/v1/embeddings", "body": {"input": "x"}}))
    src.write_text("\n".join(lines) + "\n")
    args = ["batch", "run", str(src), "--out", str(out), "--ordered", "--max-in-flight", "4", "--model", "fake-model",
            "--batch-id", "mixed-1", "--json"]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 1, result.output  # failed items
    records = [json.loads(x) for x in out.read_text().splitlines()]
    expected_lines = [n for n, text in enumerate(lines, 1) if text.strip()]
    assert [r["line"] for r in records] == expected_lines  # input order
    by_line = {r["line"]: r for r in records}
    assert by_line[11]["error"]["type"] == "invalid_json" and by_line[11]["job_id"] is None
    assert by_line[21]["custom_id"] == "emb" and by_line[21]["error"]["type"] == "unsupported"
    ok = [r for r in records if r["status"] == "succeeded"]
    assert len(ok) == 30
    assert {r["content"] for r in ok if r["custom_id"] == "req-0"} == {"echo: batch api 0"}
    assert [r["metadata"] for r in ok if r["content"] == "echo: book 1"] == [{"row_id": 1}]
    # a rerun finds everything done: nothing is written twice
    again = CliRunner().invoke(cli, args, env=env)
    assert again.exit_code == 1 and json.loads(again.stdout)["skipped"] == 32
    assert len(out.read_text().splitlines()) == 32


def test_parse_line_forms() -> None:
    api = parse_line(1, json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                                    "body": {"model": "m", "max_completion_tokens": 9, "stop": "x",
                                             "response_format": {"type": "json_object"},
                                             "messages": [{"role": "developer", "content": "sys"},
                                                          {"role": "user", "content": "hi"}]}}))
    assert api.custom_id == "a"
    assert api.fields == {"model": "m", "system_prompt": "sys", "messages": [{"role": "user", "content": "hi"}],
                          "max_output_tokens": 9, "stop": ["x"], "json_output": True}
    book = parse_line(2, json.dumps({"model": "m", "messages": [{"role": "user", "content": "q"}],
                                     "metadata": {"k": 1}, "temperature": 0.5}))
    assert book.custom_id is None and book.metadata == {"k": 1} and book.fields["temperature"] == 0.5
    plain = parse_line(3, json.dumps({"prompt": "p", "system": "s", "custom_id": 7}))
    assert plain.custom_id == "7" and plain.fields == {"model": None, "prompt": "p", "system_prompt": "s"}
    for bad, kind in [("[1]", "invalid_json"), ('{"messages": []}', "invalid_request"),
                      ('{"messages": [{"role": "tool", "content": "x"}]}', "invalid_request"),
                      ('{"messages": [{"role": "function", "content": "x"}]}', "unsupported"),
                      ('{"nothing": 1}', "invalid_request")]:
        with pytest.raises(LineError) as info:
            parse_line(4, bad)
        assert info.value.kind == kind


@pytest.mark.e2e
@pytest.mark.slow
def test_batch_lines_with_tools_and_schemas_run_through_the_queue(env: dict[str, str], tmp_path: Path) -> None:
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    schema = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}
    lines = [
        {"custom_id": "tools", "url": "/v1/chat/completions", "body": {
            "model": "fake-model", "tools": [weather], "messages": [{"role": "user", "content": "Rome"}]}},
        {"custom_id": "schema", "body": {"model": "fake-model", "messages": [{"role": "user", "content": "sum up"}],
                                         "response_format": {"type": "json_schema",
                                                             "json_schema": {"name": "s", "schema": schema}}}},
        {"custom_id": "audio", "body": {"model": "fake-model", "modalities": ["audio"],
                                        "messages": [{"role": "user", "content": "sing"}]}},
    ]
    src, out = tmp_path / "surface.jsonl", tmp_path / "surface-out.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = CliRunner().invoke(cli, ["batch", "run", str(src), "--out", str(out), "--json", "--quiet"], env=env)
    assert result.exit_code == 1, result.output  # one line refused
    got = {rec["custom_id"]: rec for rec in map(json.loads, out.read_text().splitlines())}
    assert got["tools"]["finish_reason"] == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in got["tools"]["tool_calls"]] == [("get_weather",
                                                                                              {"city": "Rome"})]
    assert json.loads(got["schema"]["content"]) == {"summary": "echo: sum up"}
    assert got["audio"]["status"] == "failed" and got["audio"]["error"]["type"] == "unsupported"
