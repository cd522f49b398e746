"""``elmrec serve``: a checkpoint behind HTTP (FastAPI on uvicorn).

Requests are validated and their ids resolved on the event loop (a bad one gets its 4xx at once),
then queued. One batcher task takes up to ``max_batch`` of them (what queued up during the last
model call, and under load whatever arrives within ``max_wait_ms`` after the first) and hands
each group of alike requests (task, top_n, candidate count) to one model call on the single model
thread: the event loop never runs the model and the model never sees two calls at once. Each
request remembers the recommender it was validated against, so a ``/reload`` (or SIGHUP) swaps
the model for new requests while queued ones finish on the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .recommender import Recommendation, Recommender

log = logging.getLogger("elmrec.serve")
Id = int | str


# --- request and response bodies ----------------------------------------------------------------


class RecommendRequest(BaseModel):
    """A known user (original id from datamaps, or internal id) or a new user's history."""

    model_config = ConfigDict(extra="forbid")
    user: Id | None = Field(None, description="original id, or internal id (1..n_users; '#5' is always internal)")
    history: list[Id] | None = Field(None, description="a new user's items, oldest first (sequential only)")
    task: Literal["sequential", "direct"] = "sequential"
    candidates: list[Id] | None = Field(None, description="direct task: the items to rank")
    top_n: int | None = Field(None, ge=1, description="default 10 (direct: at most the candidate count)")

    @model_validator(mode="after")
    def _one_source(self) -> RecommendRequest:
        if (self.user is None) == (self.history is None):
            raise ValueError("give either 'user' or 'history'")
        if self.history is not None and not self.history:
            raise ValueError("'history' is empty: give at least one item")
        if self.task == "direct":
            if self.user is None:
                raise ValueError("the direct task needs a known 'user': a new user's history is not part of its "
                                 "prompt (use task 'sequential')")
            if not self.candidates:
                raise ValueError("the direct task needs a non-empty 'candidates' list")
            if self.top_n is not None and self.top_n > len(self.candidates):
                raise ValueError(f"top_n {self.top_n} is more than the {len(self.candidates)} candidates")
            self.top_n = self.top_n or min(10, len(self.candidates))
        elif self.candidates is not None:
            raise ValueError("'candidates' is for the direct task only")
        self.top_n = self.top_n or 10
        return self


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: Id
    item: Id


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checkpoint: str | None = Field(None, description="a checkpoint directory (default: the one being served)")


class Item(BaseModel):
    item: int
    item_name: str | None
    score: float


class RecommendResponse(BaseModel):
    user: int | None = Field(description="internal user id; null for a history")
    user_name: str | None = Field(None, description="original user id (datamaps)")
    task: str
    items: list[Item]
    notes: list[str] = []


class ExplainResponse(BaseModel):
    user: int
    item: int
    explanation: str


# --- batching ------------------------------------------------------------------------------------


@dataclass
class Job:
    """One validated request: the model call it needs (``kind`` + ``key`` group alike jobs)."""

    rec: Recommender
    kind: Literal["sequential", "direct", "explain"]
    key: tuple
    payload: tuple
    future: asyncio.Future = field(default=None)  # type: ignore[assignment]


def _run_group(rec: Recommender, kind: str, key: tuple, payloads: list[tuple]) -> list[Any]:
    """One model call for a group of alike jobs (on the model thread)."""
    if kind == "sequential":
        users = [p[0] for p in payloads]
        return rec.recommend_batch(users, [p[1] for p in payloads], top_n=key[0])
    if kind == "direct":
        users = np.array([p[0] for p in payloads])
        cands = np.array([p[1] for p in payloads], dtype=np.int64)
        scores = rec.score_candidates(users, [rec.user_history(u) for u in users], cands)
        out = []
        for row, c in zip(scores, cands):
            top = np.argsort(-row, kind="stable")[: key[0]]
            out.append([Recommendation(int(c[t]), rec.item_name(c[t]), float(row[t])) for t in top])
        return out
    return rec.explain_batch(list(payloads))


class Batcher:
    """Groups queued jobs into model calls on one worker thread."""

    def __init__(self, max_batch: int, max_wait_ms: float):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.batches = self.jobs = 0
        self._last_size = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """On the serving event loop (each start gets its own queue and model thread)."""
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="elmrec-model")
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, job: Job) -> Any:
        job.future = asyncio.get_running_loop().create_future()
        await self.queue.put(job)
        return await job.future

    async def _collect(self) -> list[Job]:
        """The first job, what is queued behind it, and (under load only) whatever arrives within
        ``max_wait``: when the last batch held one job, a lone request is not kept waiting."""
        jobs = [await self.queue.get()]
        deadline = time.monotonic() + (self.max_wait if self._last_size > 1 else 0)
        while len(jobs) < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0 and self.queue.empty():
                break
            try:
                jobs.append(await asyncio.wait_for(self.queue.get(), max(left, 0)) if left > 0
                            else self.queue.get_nowait())
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
        return jobs

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            groups: dict[tuple, list[Job]] = defaultdict(list)
            for job in jobs:
                groups[(id(job.rec), job.kind, job.key)].append(job)
            for group in groups.values():
                first = group[0]
                try:
                    results = await loop.run_in_executor(
                        self.worker, _run_group, first.rec, first.kind, first.key, [j.payload for j in group])
                except Exception as e:  # noqa: BLE001 - every caller of the group gets the error
                    log.exception("model call failed")
                    for j in group:
                        if not j.future.done():
                            j.future.set_exception(e)
                    continue
                for j, r in zip(group, results):
                    if not j.future.done():  # a caller that disconnected cancelled its future
                        j.future.set_result(r)
            self.batches += 1
            self.jobs += len(jobs)
            self._last_size = len(jobs)
            for _ in jobs:
                self.queue.task_done()

    async def close(self) -> None:
        """Finish what is queued, then stop the batcher and the model thread."""
        await self.queue.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.worker.shutdown(wait=True)


# --- the application ----------------------------------------------------------------------------


class Service:
    """What the endpoints share: the current recommender, the batcher, counters."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", max_batch: int = 64, max_wait_ms: float = 5.0,
                 max_top_n: int = 100):
        self.device, self.max_top_n = device, max_top_n
        self.rec = self._load(Path(checkpoint))
        self.batcher = Batcher(max_batch, max_wait_ms)
        self.started = time.time()
        self.reloads = 0
        self._reload_lock: asyncio.Lock | None = None  # made on the serving loop

    def _load(self, directory: Path) -> Recommender:
        """Load and try a checkpoint; anything wrong raises before it could be served."""
        rec = Recommender.from_pretrained(directory, device=self.device)
        rec.recommend_batch([1], [rec.user_history(1)], top_n=1)
        return rec

    async def reload(self, checkpoint: str | Path | None) -> Recommender:
        self._reload_lock = self._reload_lock or asyncio.Lock()
        async with self._reload_lock:
            directory = Path(checkpoint) if checkpoint else self.rec.directory
            rec = await asyncio.to_thread(self._load, directory)
            self.rec = rec  # new requests go to it; queued ones finish on the model they were checked on
            self.reloads += 1
            log.info("serving %s", directory)
            return rec

    # request -> job: ids resolved now so that a bad one is a 4xx before anything is queued
    def recommend_job(self, req: RecommendRequest) -> tuple[Job, list[str]]:
        rec, notes = self.rec, []
        limit = min(self.max_top_n, rec.n_items)
        if req.top_n > limit:
            raise ValueError(f"top_n {req.top_n} is out of range: at most {limit} on this server")
        if req.history is not None:
            user, hist = 0, np.array([rec.resolve_item(i) for i in req.history], dtype=np.int64)
        else:
            user = rec.resolve_user(req.user)
            hist = rec.user_history(user)
        if req.task == "direct":
            cands = tuple(rec.resolve_item(i) for i in req.candidates)
            if len(set(cands)) != len(cands):
                raise ValueError("'candidates' lists an item twice")
            return Job(rec, "direct", (req.top_n, len(cands)), (user, cands)), notes
        if len(hist) > rec.max_history:
            notes.append(f"history has {len(hist)} items; the model reads the last {rec.max_history} "
                         f"(its max_history); all of them are excluded from the results")
        return Job(rec, "sequential", (req.top_n,), (user, hist)), notes

    def explain_job(self, req: ExplainRequest) -> Job:
        rec = self.rec
        return Job(rec, "explain", (), (rec.resolve_user(req.user), rec.resolve_item(req.item)))

    def health(self) -> dict:
        rec = self.rec
        return {"status": "ok", "checkpoint": str(rec.directory), "id_tokens": rec.id_tokens,
                "device": str(rec.device), "uptime_s": round(time.time() - self.started, 3),
                "requests": self.batcher.jobs, "batches": self.batcher.batches, "reloads": self.reloads}

    def metadata(self) -> dict:
        rec = self.rec
        return {"checkpoint": str(rec.directory), "n_users": rec.n_users, "n_items": rec.n_items,
                "tasks": sorted(rec.trained_tasks), "max_history": rec.max_history, "max_top_n": self.max_top_n,
                "dataset": rec.dataset_info, "config": rec.run.to_dict(),
                "batching": {"max_batch": self.batcher.max_batch, "max_wait_ms": self.batcher.max_wait * 1000}}


def create_app(checkpoint: str | Path, device: str = "auto", max_batch: int = 64, max_wait_ms: float = 5.0,
               max_top_n: int = 100) -> FastAPI:
    """The ASGI app; the checkpoint is loaded (and tried) here, so a bad one fails before serving."""
    service = Service(checkpoint, device, max_batch, max_wait_ms, max_top_n)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # no signals off the main thread
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload_on_signal()))
        yield
        await service.batcher.close()

    async def _reload_on_signal() -> None:
        try:
            await service.reload(None)
        except Exception:  # noqa: BLE001 - keep serving the old model
            log.exception("SIGHUP reload refused; still serving %s", service.rec.directory)

    app = FastAPI(title="elmrec", description="ELMRec recommendations over HTTP", lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(KeyError)
    async def _unknown_id(request: Request, e: KeyError) -> JSONResponse:
        return JSONResponse({"detail": e.args[0] if e.args else str(e)}, status_code=404)

    @app.exception_handler(ValueError)
    async def _bad_value(request: Request, e: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=422)

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(req: RecommendRequest) -> RecommendResponse:
        job, notes = service.recommend_job(req)
        recs = await service.batcher.submit(job)
        items = [Item(**r.to_dict()) for r in recs]
        user = job.payload[0] or None
        name = job.rec.user_names.get(user) if user and job.rec.user_names else None
        return RecommendResponse(user=user, user_name=name, task=req.task, items=items, notes=notes)

    @app.post("/explain", response_model=ExplainResponse)
    async def explain(req: ExplainRequest) -> ExplainResponse:
        job = service.explain_job(req)
        if "explanation" not in job.rec.trained_tasks:
            raise HTTPException(409, f"{job.rec.directory} was not trained on explanations")
        text = await service.batcher.submit(job)
        return ExplainResponse(user=job.payload[0], item=job.payload[1], explanation=text)

    @app.get("/health")
    async def health() -> dict:
        return service.health()

    @app.get("/metadata")
    async def metadata() -> dict:
        return service.metadata()

    @app.post("/reload")
    async def reload(req: ReloadRequest | None = None) -> dict:
        target = req.checkpoint if req else None
        try:
            await service.reload(target)
        except Exception as e:  # noqa: BLE001 - any failure to load refuses the checkpoint
            raise HTTPException(422, f"checkpoint {target or service.rec.directory} refused ({type(e).__name__}: "
                                     f"{e}); still serving {service.rec.directory}") from None
        return service.health()

    return app


def serve(checkpoint: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          max_batch: int = 64, max_wait_ms: float = 5.0, max_top_n: int = 100, log_level: str = "info") -> None:
    """Run the service until SIGINT/SIGTERM; in-flight requests finish, new connections are refused."""
    import uvicorn

    app = create_app(checkpoint, device, max_batch, max_wait_ms, max_top_n)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30)


__all__ = ["create_app", "serve", "Service", "Batcher"]
