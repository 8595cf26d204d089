"""`edgesight serve`: every task over HTTP (FastAPI + uvicorn, the [serve] extra).

Routes
  GET  /hello-world          the seed's liveness route
  POST /                     the seed's captioning route: {"image": base64} ->
                             {"tags": [[tag, score], ...], "captions": [...], "english_captions": [...]}
  POST /v1/<task>            JSON in (the task module's `from_json`), the result's `to_dict()` out
  GET  /health               which tasks are ready, which are not and why, queue state
  GET  /v1/models            bundle, backend, precision, threads and fidelity of each loaded task

Models load once at start-up; a task whose bundle is missing is reported in /health (503 on its
route) instead of stopping the server. Inference runs in a pool of `concurrency` worker threads;
up to `queue` more requests wait, and beyond that the server answers 503 at once (the client
retries) rather than letting latency grow without bound. Bodies over `max_body_mb` get 413 while
streaming in, wrong content types 415, bad JSON or bad images 400 with the reason.

Settings: command-line flags, else environment variables (like the seed's container):
EDGESIGHT_HOST, EDGESIGHT_PORT, EDGESIGHT_THREADS, EDGESIGHT_CONCURRENCY, EDGESIGHT_QUEUE,
EDGESIGHT_MAX_BODY_MB, EDGESIGHT_DEVICE, EDGESIGHT_MODEL_<TASK> (bundle path), and the seed's
total_captions_number.
"""

import asyncio
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from ._optional import require
from .errors import EdgesightError, InputError
from .registry import TASKS


def _env(name: str, default, cast=str):
    value = os.environ.get(name)
    return cast(value) if value not in (None, "") else default


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int | None = None          # per inference; None = edgesight's default (EDGESIGHT_THREADS / cores)
    concurrency: int = 1                # inferences at once: one request using all threads is fastest on an edge CPU
    queue: int = 32                     # requests allowed to wait; more get 503
    max_body_mb: float = 16.0
    models: dict = field(default_factory=dict)   # task -> bundle path (missing = embedded default)
    caption_samples: int | None = None
    device: str = "cpu"                 # cpu | cuda | auto, for every task

    @classmethod
    def from_env(cls) -> "ServeConfig":
        models = {t: os.environ[f"EDGESIGHT_MODEL_{t.upper()}"] for t in TASKS if os.environ.get(f"EDGESIGHT_MODEL_{t.upper()}")}
        return cls(host=_env("EDGESIGHT_HOST", cls.host), port=_env("EDGESIGHT_PORT", cls.port, int),
                   threads=_env("EDGESIGHT_THREADS", None, int), concurrency=_env("EDGESIGHT_CONCURRENCY", cls.concurrency, int),
                   queue=_env("EDGESIGHT_QUEUE", cls.queue, int), max_body_mb=_env("EDGESIGHT_MAX_BODY_MB", cls.max_body_mb, float),
                   models=models, caption_samples=_env("total_captions_number", None, int),
                   device=_env("EDGESIGHT_DEVICE", cls.device))

    def check(self) -> "ServeConfig":
        for name in ("concurrency", "port"):
            if getattr(self, name) < (1 if name == "concurrency" else 0):
                raise InputError(f"serve: {name} must be positive, got {getattr(self, name)}")
        if self.queue < 0 or self.max_body_mb <= 0:
            raise InputError(f"serve: queue must be >= 0 and max_body_mb > 0 (got {self.queue}, {self.max_body_mb})")
        unknown = set(self.models) - set(TASKS)
        if unknown:
            raise InputError(f"serve: unknown task(s) {sorted(unknown)} in --model; tasks: {', '.join(TASKS)}")
        return self


def load_tasks(config: ServeConfig) -> tuple[dict, dict]:
    """Load every task once: ({name: task}, {name: why it is unavailable})."""
    ready, missing = {}, {}
    for name, spec in TASKS.items():
        try:
            module = spec.load_module()
            if not hasattr(module, "from_json"):
                raise EdgesightError(f"task module edgesight.tasks.{spec.module} has no from_json (no HTTP route)")
            kwargs = {"num_samples": config.caption_samples} if name == "caption" and config.caption_samples is not None else {}
            ready[name] = spec.load_class().from_pretrained(config.models.get(name), threads=config.threads,
                                                            device=config.device, **kwargs)
        except (EdgesightError, ImportError, OSError) as exc:
            missing[name] = f"{type(exc).__name__}: {exc}"
    return ready, missing


class _Rejected(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


def create_app(config: ServeConfig, tasks: dict | None = None, missing: dict | None = None):
    """The FastAPI application; `tasks`/`missing` default to `load_tasks(config)`.
    (No `from __future__ import annotations` in this module: FastAPI must see the real Request type.)"""
    fastapi = require("fastapi", "serve")
    from fastapi.responses import JSONResponse, PlainTextResponse

    config.check()
    if tasks is None:
        tasks, missing = load_tasks(config)
    missing = missing or {}
    limit = int(config.max_body_mb * 1024 * 1024)
    pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="edgesight-infer")
    state = {"pending": 0, "served": 0, "rejected": 0}
    app = fastapi.FastAPI(title="edgesight", version=__import__("edgesight").__version__)

    @app.exception_handler(_Rejected)
    async def _rejected(request, exc: _Rejected):
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    async def read_json(request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise _Rejected(415, f"content type must be application/json, got {ctype or 'none'}")
        declared = request.headers.get("content-length") or "0"
        if not declared.isdigit():
            raise _Rejected(400, f"bad Content-Length header {declared[:40]!r}")
        if int(declared) > limit:
            raise _Rejected(413, f"body over the {config.max_body_mb:g} MB limit; send a smaller image")
        body = bytearray()
        async for chunk in request.stream():   # counted while streaming: chunked bodies are bounded too
            body += chunk
            if len(body) > limit:
                raise _Rejected(413, f"body over the {config.max_body_mb:g} MB limit; send a smaller image")
        if not body:
            raise _Rejected(400, "empty body; send a JSON object")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _Rejected(400, f"body is not valid JSON ({exc})") from None

    async def run(name: str, request, shape):
        if name not in tasks:
            raise _Rejected(503 if name in missing else 404,
                            f"task {name!r} is not available: {missing[name]}" if name in missing else
                            f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
        payload = await read_json(request)
        if state["pending"] >= config.concurrency + config.queue:
            state["rejected"] += 1
            raise _Rejected(503, f"server busy ({state['pending']} requests in flight); retry shortly")
        state["pending"] += 1
        try:
            task = tasks[name]
            module = TASKS[name].load_module()
            result = await asyncio.get_running_loop().run_in_executor(pool, lambda: shape(task(module.from_json(payload))))
            state["served"] += 1
            return result
        except InputError as exc:
            raise _Rejected(400, str(exc)) from None
        except EdgesightError as exc:           # a model failure: say so, keep serving
            raise _Rejected(500, f"{type(exc).__name__}: {exc}") from None
        finally:
            state["pending"] -= 1

    def to_json(result):
        if hasattr(result, "to_dict"):
            return result.to_dict()
        if isinstance(result, list):
            return [to_json(r) for r in result]
        return result

    @app.get("/hello-world", response_class=PlainTextResponse)
    async def hello_world():
        return "Hello, World!"

    @app.post("/")
    async def seed_caption(request: fastapi.Request):
        return await run("caption", request, lambda r: r.to_seed_dict())

    @app.post("/v1/{name}")
    async def task_route(name: str, request: fastapi.Request):
        return await run(name, request, to_json)

    @app.get("/health")
    async def health():
        return {"status": "ok" if tasks else "no-models", "tasks": {**{n: "ready" for n in tasks}, **missing},
                "pending": state["pending"], "served": state["served"], "rejected": state["rejected"],
                "limits": {"concurrency": config.concurrency, "queue": config.queue, "max_body_mb": config.max_body_mb}}

    @app.get("/v1/models")
    async def models():
        return {n: t.info() for n, t in tasks.items()}

    app.state.config, app.state.tasks = config, tasks
    return app


def add_cli_arguments(parser) -> None:
    from .cli import add_runtime_arguments

    env = ServeConfig.from_env()
    parser.add_argument("--host", default=env.host, help="bind address (default 127.0.0.1; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=env.port)
    parser.add_argument("--concurrency", type=int, default=env.concurrency, help="inferences run at once")
    parser.add_argument("--queue", type=int, default=env.queue, help="requests that may wait; beyond: 503")
    parser.add_argument("--max-body-mb", type=float, default=env.max_body_mb, help="request size limit (413 beyond)")
    parser.add_argument("--model", action="append", default=[], metavar="TASK=BUNDLE",
                        help="bundle for a task (repeatable); unset tasks use their embedded default")
    parser.add_argument("--caption-samples", type=int, default=env.caption_samples, help="nucleus captions per image (default 5)")
    add_runtime_arguments(parser, backend=False, device=env.device, threads=env.threads)


def main(args) -> None:
    uvicorn = require("uvicorn", "serve")
    models = dict(ServeConfig.from_env().models)
    for item in args.model:
        task, sep, path = item.partition("=")
        if not sep:
            raise InputError(f"--model expects TASK=BUNDLE, got {item!r}")
        models[task] = path
    config = ServeConfig(host=args.host, port=args.port, threads=args.threads, concurrency=args.concurrency,
                         queue=args.queue, max_body_mb=args.max_body_mb, models=models,
                         caption_samples=args.caption_samples, device=args.device).check()
    app = create_app(config)
    print(f"edgesight serve: http://{config.host}:{config.port} tasks ready: {', '.join(app.state.tasks) or 'none'}; "
          f"settings {json.dumps({k: v for k, v in asdict(config).items() if k != 'models'})}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_keep_alive=30)
