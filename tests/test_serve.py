"""``elmrec serve``: every endpoint, batching equal to one-at-a-time answers, bad input as 4xx,
reload (also of a damaged checkpoint, also under load) and graceful shutdown."""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from elmrec.recommender import Recommender
from elmrec.serve import create_app


@pytest.fixture(scope="module")
def client(trained_checkpoint: Path):
    with TestClient(create_app(trained_checkpoint, device="cpu")) as c:
        yield c


@pytest.fixture(scope="module")
def rec(trained_checkpoint: Path) -> Recommender:
    return Recommender.from_pretrained(trained_checkpoint, device="cpu")


class LiveServer:
    """The app under uvicorn on a free loopback port, in a thread."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def _items(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [r["item"] for r in response.json()["items"]]


def test_health_metadata_and_openapi(client, trained_checkpoint):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["checkpoint"] == str(trained_checkpoint) and h["id_tokens"] == "item"
    assert h["device"] == "cpu" and h["uptime_s"] >= 0
    m = client.get("/metadata").json()
    assert m["n_users"] == 600 and m["n_items"] == 40 and m["tasks"] == ["direct", "sequential"]
    assert m["config"]["model"]["id_tokens"] == "item" and m["max_history"] == 20
    spec = client.get("/openapi.json").json()
    assert {"/recommend", "/explain", "/health", "/metadata", "/reload"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


def test_recommend_answers_as_the_python_api(client, rec):
    r = client.post("/recommend", json={"user": 5, "top_n": 7})
    assert _items(r) == [x.item for x in rec.recommend(5, top_n=7)]
    hist = [3, 9, 11]
    r = client.post("/recommend", json={"history": hist, "top_n": 5})
    assert _items(r) == [x.item for x in rec.recommend(history=hist, top_n=5)]
    assert r.json()["user"] is None and not set(_items(r)) & set(hist)
    # direct: the candidates ranked by the checkpoint's exact scores
    cands = [4, 8, 15, 16, 23, 30]
    r = client.post("/recommend", json={"user": 5, "task": "direct", "candidates": cands, "top_n": 3})
    scores = rec.score_candidates([5], [rec.user_history(5)], [cands])[0]
    assert _items(r) == [cands[k] for k in sorted(range(len(cands)), key=lambda k: -scores[k])[:3]]
    assert r.json()["items"][0]["score"] == pytest.approx(max(scores), abs=1e-5)


def test_long_history_is_truncated_with_a_note(client, rec):
    hist = list(range(1, 31))  # 30 items, the model reads the last 20
    r = client.post("/recommend", json={"history": hist, "top_n": 5})
    assert "reads the last 20" in r.json()["notes"][0]
    assert len(_items(r)) == 5 and not set(_items(r)) & set(hist)


@pytest.mark.parametrize("body, status, message", [
    ({"user": 99999}, 404, "unknown user 99999"),
    ({"history": [1, 999]}, 404, "unknown item 999"),
    ({"history": []}, 422, "'history' is empty"),
    ({}, 422, "give either 'user' or 'history'"),
    ({"user": 1, "history": [2]}, 422, "give either 'user' or 'history'"),
    ({"user": 1, "top_n": 0}, 422, "greater than or equal to 1"),
    ({"user": 1, "top_n": 41}, 422, "top_n 41 is out of range: at most 40"),
    ({"user": 1, "top_n": "ten"}, 422, "valid integer"),
    ({"user": 1, "task": "direct"}, 422, "non-empty 'candidates'"),
    ({"user": 1, "task": "direct", "candidates": [1, 2], "top_n": 3}, 422, "more than the 2 candidates"),
    ({"user": 1, "task": "direct", "candidates": [1, 1]}, 422, "lists an item twice"),
    ({"history": [1], "task": "direct", "candidates": [1, 2]}, 422, "needs a known 'user'"),
    ({"user": 1, "candidates": [1, 2]}, 422, "direct task only"),
    ({"user": 1, "task": "bought"}, 422, "'sequential' or 'direct'"),
    ({"user": 1, "colour": "red"}, 422, "Extra inputs"),
])
def test_bad_recommend_requests_get_a_4xx_that_says_why(client, body, status, message):
    r = client.post("/recommend", json=body)
    assert r.status_code == status and message in r.text, r.text


def test_bodies_that_are_not_json_objects(client):
    r = client.post("/recommend", content=b"{user: 1", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON decode error" in r.text
    assert client.post("/recommend", json=[1, 2]).status_code == 422
    assert client.post("/recommend").status_code == 422  # no body


def test_explain(client, tmp_path, synthetic_dataset):
    r = client.post("/explain", json={"user": 1, "item": 2})
    assert r.status_code == 409 and "not trained on explanations" in r.text
    assert client.post("/explain", json={"user": 1, "item": 999}).status_code == 404
    from elmrec.config import load_config
    from elmrec.training import train

    cfg = load_config(overrides=dict(size="tiny", batch_size=16, epochs=1, valid_users=10,
                                     tasks=["sequential", "explanation"]))
    train(cfg, synthetic_dataset, tmp_path / "run", progress=False, echo=lambda s: None)
    with TestClient(create_app(tmp_path / "run" / "best", device="cpu")) as c:
        r = c.post("/explain", json={"user": 1, "item": 2})
        assert r.status_code == 200 and r.json()["user"] == 1 and isinstance(r.json()["explanation"], str)


def test_concurrent_requests_are_batched_and_get_their_own_answers(trained_checkpoint, rec):
    users = list(range(1, 41))
    expected = {u: [r.item for r in rec.recommend(u, top_n=5)] for u in users}
    app = create_app(trained_checkpoint, device="cpu", max_batch=16, max_wait_ms=50)

    async def burst(url: str) -> list:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            seq = [c.post("/recommend", json={"user": u, "top_n": 5}) for u in users]
            direct = [c.post("/recommend", json={"user": u, "task": "direct", "candidates": [1, 2, 3], "top_n": 3})
                      for u in users[:8]]
            return await asyncio.gather(*seq, *direct)

    with LiveServer(app) as server:
        answers = asyncio.run(burst(server.url))
        health = httpx.get(server.url + "/health").json()
    assert {u: _items(a) for u, a in zip(users, answers)} == expected
    for u, a in zip(users[:8], answers[len(users):]):
        scores = rec.score_candidates([u], [rec.user_history(u)], [[1, 2, 3]])[0]
        assert _items(a) == [c for _, c in sorted(zip(-scores, [1, 2, 3]))]
    assert health["requests"] == 48 and health["batches"] < 48  # grouped, not one call each


def test_reload_refuses_a_damaged_checkpoint_and_swaps_under_load(trained_checkpoint, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(trained_checkpoint, damaged)
    (damaged / "model.safetensors").write_bytes((damaged / "model.safetensors").read_bytes()[:1000])
    copy = tmp_path / "copy"
    shutil.copytree(trained_checkpoint, copy)
    app = create_app(trained_checkpoint, device="cpu", max_batch=8, max_wait_ms=2)

    async def load_and_reload(url: str) -> tuple[list, list]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            first = await c.post("/recommend", json={"user": 3})
            work = [asyncio.create_task(c.post("/recommend", json={"user": 1 + k % 50})) for k in range(60)]
            reloads = []
            for target in (damaged, copy, None):
                await asyncio.sleep(0.05)
                reloads.append(await c.post("/reload", json={"checkpoint": str(target) if target else None}))
            answers = await asyncio.gather(*work)
            answers.append(first)
            answers.append(await c.post("/recommend", json={"user": 3}))
            return answers, reloads

    with LiveServer(app) as server:
        answers, reloads = asyncio.run(load_and_reload(server.url))
        health = httpx.get(server.url + "/health").json()
    assert reloads[0].status_code == 422 and "refused" in reloads[0].text and "still serving" in reloads[0].text
    assert reloads[1].status_code == 200 and reloads[1].json()["checkpoint"] == str(copy)
    assert reloads[2].status_code == 200 and reloads[2].json()["checkpoint"] == str(copy)  # default: the current one
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    assert _items(answers[-1]) == _items(answers[-2])  # same weights before and after
    assert health["reloads"] == 2


def test_shutdown_finishes_requests_in_flight_and_refuses_new_ones(trained_checkpoint):
    app = create_app(trained_checkpoint, device="cpu", max_batch=64, max_wait_ms=400)  # a request waits 0.4 s

    async def in_flight_then_stop(server: LiveServer):
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            pending = asyncio.create_task(c.post("/recommend", json={"user": 2}))
            await asyncio.sleep(0.15)
            server.server.should_exit = True
            return await pending

    with LiveServer(app) as server:
        answer = asyncio.run(in_flight_then_stop(server))
        server.thread.join(30)
        assert not server.thread.is_alive()
        with pytest.raises(httpx.ConnectError):
            httpx.post(server.url + "/recommend", json={"user": 2})
    assert len(_items(answer)) == 10


def test_cli_refuses_a_missing_checkpoint_before_serving(tmp_path, capsys):
    from elmrec.cli import main

    assert main(["serve", "--checkpoint", str(tmp_path / "nowhere"), "--port", "1"]) == 2
    assert "not an elmrec checkpoint" in capsys.readouterr().err
