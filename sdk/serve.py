"""`edgesight serve`: every task over HTTP (FastAPI + uvicorn, the [serve] extra).

Routes
  GET  /hello-world          the seed's liveness route
  POST /                     the seed's captioning route: {"image": base64} ->
                             {"tags": [[tag, score], ...], "captions": [...], "english_captions": [...]}
  POST /v1/<task>            JSON in (the task module's `from_json`), the result's `to_dict()` out
  GET  /health               which tasks are ready, which are not and why, queue and worker state, limits
  GET  /v1/models            bundle, backend, precision, threads and fidelity of each loaded task
                             (local paths shown only with --show-paths)
  GET  /metrics              Prometheus text format: requests by route and status, latency histogram,
                             queue depth, rejections, time-limit outcomes, model load times
  GET  /ui                   the web console (edgesight.console; off with --no-ui): a tab per task, calling
                             the /v1/<task> routes above

Models load once at start-up; a task whose bundle is missing is reported in /health (503 on its
route) instead of stopping the server. Inference runs in a pool of `concurrency` worker threads;
up to `queue` more requests wait, and beyond that the server answers 503 at once (the client
retries) rather than letting latency grow without bound. Bodies over `max_body_mb` get 413 while
streaming in, wrong content types 415, bad JSON or bad images 400 with the reason; every error body is
{"error": reason, "type": kind}. Input limits (prompt characters, batch length, JSON depth, number
size, image pixels) are edgesight.limits'.

Reliability: an inference running past `time_limit_s` is answered 503 (Retry-After) and stopped, its
worker recovered or replaced (edgesight.workers; /health counts both); a request head or body that
does not arrive within `read_timeout_s` closes the connection (408 for a body); a client that goes
away is logged as one line. SIGTERM always ends the process.

Security: with `--api-key` / EDGESIGHT_API_KEY every route but /health, /hello-world and the console's page
(not what it fetches) needs `Authorization: Bearer <key>` (401 otherwise; compared in constant time).
Binding beyond loopback without a key prints a warning. Local paths are hidden from /v1/models and /health unless
`--show-paths`.

Settings: command-line flags, else environment variables (like the seed's container):
EDGESIGHT_HOST, EDGESIGHT_PORT, EDGESIGHT_THREADS, EDGESIGHT_CONCURRENCY, EDGESIGHT_QUEUE,
EDGESIGHT_MAX_BODY_MB, EDGESIGHT_DEVICE, EDGESIGHT_TIME_LIMIT, EDGESIGHT_READ_TIMEOUT, EDGESIGHT_API_KEY,
EDGESIGHT_MODEL_<TASK> (bundle path), EDGESIGHT_UI (0 = no console), and the seed's total_captions_number.
"""

import asyncio
import hmac
import json
import logging
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field

from ._optional import require
from .errors import EdgesightError, InputError
from .limits import check_batch, describe_limits, parse_json
from .registry import TASKS
from .workers import InferencePool, TimeLimitExceeded

log = logging.getLogger("edgesight.serve")
OPEN_ROUTES = {"/health", "/hello-world"}   # answered without the API key (liveness probes, the seed's check)


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
    time_limit_s: float = 60.0          # one inference (queue wait included); beyond: 503, the worker stopped
    read_timeout_s: float = 30.0        # to receive a request head, and a body; beyond: connection closed / 408
    api_key: str | None = field(default=None, repr=False)   # Bearer token required on every route but OPEN_ROUTES
    show_paths: bool = False            # local bundle paths in /v1/models and /health
    ui: bool = True                     # the web console at /ui

    @classmethod
    def from_env(cls) -> "ServeConfig":
        models = {t: os.environ[f"EDGESIGHT_MODEL_{t.upper()}"] for t in TASKS if os.environ.get(f"EDGESIGHT_MODEL_{t.upper()}")}
        return cls(host=_env("EDGESIGHT_HOST", cls.host), port=_env("EDGESIGHT_PORT", cls.port, int),
                   threads=_env("EDGESIGHT_THREADS", None, int), concurrency=_env("EDGESIGHT_CONCURRENCY", cls.concurrency, int),
                   queue=_env("EDGESIGHT_QUEUE", cls.queue, int), max_body_mb=_env("EDGESIGHT_MAX_BODY_MB", cls.max_body_mb, float),
                   models=models, caption_samples=_env("total_captions_number", None, int),
                   device=_env("EDGESIGHT_DEVICE", cls.device), time_limit_s=_env("EDGESIGHT_TIME_LIMIT", cls.time_limit_s, float),
                   read_timeout_s=_env("EDGESIGHT_READ_TIMEOUT", cls.read_timeout_s, float),
                   api_key=_env("EDGESIGHT_API_KEY", None), ui=_env("EDGESIGHT_UI", True, lambda v: v.lower() not in ("0", "false", "no")))

    def check(self) -> "ServeConfig":
        if not (self.time_limit_s > 0 and self.read_timeout_s > 0):
            raise InputError(f"serve: time_limit_s and read_timeout_s must be > 0 (got {self.time_limit_s}, {self.read_timeout_s})")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("serve: the API key is empty; pass a long random token or leave it unset")
        for name in ("concurrency", "port"):
            if getattr(self, name) < (1 if name == "concurrency" else 0):
                raise InputError(f"serve: {name} must be positive, got {getattr(self, name)}")
        if self.queue < 0 or self.max_body_mb <= 0:
            raise InputError(f"serve: queue must be >= 0 and max_body_mb > 0 (got {self.queue}, {self.max_body_mb})")
        unknown = set(self.models) - set(TASKS)
        if unknown:
            raise InputError(f"serve: unknown task(s) {sorted(unknown)} in --model; tasks: {', '.join(TASKS)}")
        return self


def load_tasks(config: ServeConfig, load_seconds: dict | None = None) -> tuple[dict, dict]:
    """Load every task once: ({name: task}, {name: why it is unavailable}); `load_seconds` gets each time."""
    ready, missing = {}, {}
    for name, spec in TASKS.items():
        t0 = time.perf_counter()
        try:
            module = spec.load_module()
            if not hasattr(module, "from_json"):
                raise EdgesightError(f"task module edgesight.tasks.{spec.module} has no from_json (no HTTP route)")
            kwargs = {"num_samples": config.caption_samples} if name == "caption" and config.caption_samples is not None else {}
            ready[name] = spec.load_class().from_pretrained(config.models.get(name), threads=config.threads,
                                                            device=config.device, **kwargs)
        except (EdgesightError, ImportError, OSError) as exc:
            missing[name] = f"{type(exc).__name__}: {exc}"
        if load_seconds is not None:
            load_seconds[name] = time.perf_counter() - t0
    return ready, missing


class _Rejected(Exception):
    def __init__(self, status: int, message: str, kind: str = "InputError", headers: dict | None = None):
        self.status, self.message, self.kind, self.headers = status, message, kind, headers


_PATH = re.compile(r"(?<![\w.])(?:~|[A-Za-z]:)?(?:[/\\][^\s/\\:'\",;()]+)+")


def hide_paths(value):
    """Local paths in a JSON-like value cut to their last component ("/home/me/bundles/kw" -> "kw")."""
    if isinstance(value, dict):
        return {k: hide_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [hide_paths(v) for v in value]
    if isinstance(value, str):
        return _PATH.sub(lambda m: re.split(r"[/\\]", m.group(0))[-1] or m.group(0), value)
    return value


def _authorized(header: str | None, key: str) -> bool:
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


class _Metrics:
    """The Prometheus series of one app (its own registry: several apps in one process stay apart)."""

    def __init__(self, state: dict, pool: InferencePool, load_seconds: dict):
        pc = require("prometheus_client", "serve")
        self.registry = reg = pc.CollectorRegistry()
        self.requests = pc.Counter("edgesight_requests", "HTTP requests answered", ["route", "status"], registry=reg)
        self.latency = pc.Histogram("edgesight_request_duration_seconds", "time to answer a request", ["route"], registry=reg,
                                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.rejected = pc.Counter("edgesight_rejected", "requests refused before inference", ["reason"], registry=reg)
        pc.Gauge("edgesight_queue_depth", "requests waiting or running", registry=reg).set_function(lambda: state["pending"])
        workers = pc.Gauge("edgesight_workers", "inference workers by state", ["state"], registry=reg)
        workers.labels("active").set_function(lambda: pool.stats()["workers"])
        workers.labels("stuck").set_function(lambda: pool.stats()["stuck"])
        outcomes = pc.Gauge("edgesight_time_limit_events", "time-limit outcomes since start", ["outcome"], registry=reg)
        for name in ("time_limit_exceeded", "recovered", "replaced"):
            outcomes.labels(name).set_function(lambda name=name: pool.stats()[name])
        load = pc.Gauge("edgesight_model_load_seconds", "time to load each task's bundle at start-up", ["task"], registry=reg)
        for task, seconds in load_seconds.items():
            load.labels(task).set(seconds)
        self.text = lambda: pc.generate_latest(reg)
        self.content_type = pc.CONTENT_TYPE_LATEST


def create_app(config: ServeConfig, tasks: dict | None = None, missing: dict | None = None):
    """The FastAPI application; `tasks`/`missing` default to `load_tasks(config)`.
    (No `from __future__ import annotations` in this module: FastAPI must see the real Request type.)"""
    fastapi = require("fastapi", "serve")
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from starlette.requests import ClientDisconnect

    config.check()
    load_seconds: dict = {}
    if tasks is None:
        tasks, missing = load_tasks(config, load_seconds)
    missing = missing or {}
    limit = int(config.max_body_mb * 1024 * 1024)
    pool = InferencePool(config.concurrency, config.time_limit_s)
    state = {"pending": 0, "served": 0, "rejected": 0}
    metrics = _Metrics(state, pool, load_seconds)
    shown = (lambda v: v) if config.show_paths else hide_paths
    app = fastapi.FastAPI(title="edgesight", version=__import__("edgesight").__version__)
    routes = {"/", "/hello-world", "/health", "/v1/models", "/metrics"} | {f"/v1/{n}" for n in TASKS}
    open_routes = OPEN_ROUTES
    if config.ui:   # the page is open (the key is typed into it); what it fetches is not
        from . import console
        routes, open_routes = routes | console.PAGE_ROUTES, OPEN_ROUTES | console.PAGE_ROUTES

    def error(status: int, message: str, kind: str, headers: dict | None = None):
        return JSONResponse({"error": message, "type": kind}, status_code=status, headers=headers)

    @app.exception_handler(_Rejected)
    async def _rejected(request, exc: _Rejected):
        headers = {"Retry-After": "1", **(exc.headers or {})} if exc.status == 503 else exc.headers
        return error(exc.status, exc.message, exc.kind, headers)

    @app.exception_handler(404)
    async def _not_found(request, exc):
        return error(404, f"no route {request.method} {request.url.path[:100]}; see /health for the tasks", "NotFound")

    @app.exception_handler(405)
    async def _not_allowed(request, exc):
        return error(405, f"{request.method} is not allowed on {request.url.path[:100]}", "MethodNotAllowed")

    @app.middleware("http")
    async def guard(request, call_next):
        """API key (constant-time), then the request; every answer counted by route and status."""
        path, t0 = request.url.path, time.perf_counter()
        route = path if path in routes else "other"
        if config.api_key and path not in open_routes and not _authorized(request.headers.get("authorization"), config.api_key):
            metrics.rejected.labels("unauthorized").inc()
            response = error(401, "missing or wrong API key; send 'Authorization: Bearer <key>'", "Unauthorized",
                             {"WWW-Authenticate": 'Bearer realm="edgesight"'})
        else:
            response = await call_next(request)
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - t0)
        return response

    async def read_json(request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise _Rejected(415, f"content type must be application/json, got {ctype[:60] or 'none'}", "UnsupportedMediaType")
        declared = request.headers.get("content-length") or "0"
        if not declared.isdigit():
            raise _Rejected(400, f"bad Content-Length header {declared[:40]!r}")
        too_large = _Rejected(413, f"body over the {config.max_body_mb:g} MB limit; send a smaller image", "PayloadTooLarge")
        if int(declared) > limit:
            raise too_large
        body = bytearray()

        async def receive():
            async for chunk in request.stream():   # counted while streaming: chunked bodies are bounded too
                body.extend(chunk)
                if len(body) > limit:
                    raise too_large
        try:
            await asyncio.wait_for(receive(), config.read_timeout_s)
        except asyncio.TimeoutError:
            raise _Rejected(408, f"the body did not arrive within {config.read_timeout_s:g} s", "RequestTimeout",
                            {"Connection": "close"}) from None
        if not body:
            raise _Rejected(400, "empty body; send a JSON object")
        try:
            return parse_json(body, "body")
        except InputError as exc:
            raise _Rejected(400, str(exc)) from None

    def call(name: str, payload):
        """Runs on a worker: the task's from_json, then the task (with per-call options if it returned a Call)."""
        from .tasks.base import Call

        request = TASKS[name].load_module().from_json(payload)
        inputs, options = (request.inputs, request.options) if isinstance(request, Call) else (request, {})
        return tasks[name](check_batch(inputs), **options)

    async def run(name: str, request, shape):
        if name not in tasks:
            raise _Rejected(503 if name in missing else 404,
                            f"task {name!r} is not available: {shown(missing[name])}" if name in missing else
                            f"unknown task {name[:60]!r}; tasks: {', '.join(TASKS)}", "Unavailable" if name in missing else "NotFound")
        try:
            payload = await read_json(request)
        except ClientDisconnect:
            log.warning("client %s went away while sending %s", _client(request), request.url.path)
            raise _Rejected(400, "client disconnected", "ClientDisconnect") from None
        if state["pending"] >= config.concurrency + config.queue:
            state["rejected"] += 1
            metrics.rejected.labels("busy").inc()
            raise _Rejected(503, f"server busy ({state['pending']} requests in flight); retry shortly", "Busy")
        state["pending"] += 1
        try:
            result = shape(await pool.run(lambda: call(name, payload)))
            state["served"] += 1
            return result
        except InputError as exc:
            raise _Rejected(400, shown(str(exc)), type(exc).__name__) from None
        except TimeLimitExceeded as exc:
            metrics.rejected.labels("time_limit").inc()
            raise _Rejected(503, str(exc), "TimeLimitExceeded") from None
        except EdgesightError as exc:           # a model failure: say so, keep serving
            raise _Rejected(500, f"{type(exc).__name__}: {shown(str(exc))}", type(exc).__name__) from None
        except Exception as exc:                # a bug: one log line with the trace, a typed answer, keep serving
            log.exception("internal error on %s", request.url.path)
            raise _Rejected(500, f"internal error ({type(exc).__name__}); see the server log", "InternalError") from None
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
        workers = pool.stats()
        status = "degraded" if workers["stuck"] else ("ok" if tasks else "no-models")
        return {"status": status, "tasks": {**{n: "ready" for n in tasks}, **shown(missing)},
                "pending": state["pending"], "served": state["served"], "rejected": state["rejected"],
                "workers": workers,
                "limits": {"concurrency": config.concurrency, "queue": config.queue, "max_body_mb": config.max_body_mb,
                           "time_limit_s": config.time_limit_s, "read_timeout_s": config.read_timeout_s,
                           **describe_limits()},
                "auth": bool(config.api_key)}

    @app.get("/v1/models")
    async def models():
        return {n: shown(t.info()) for n, t in tasks.items()}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.text(), media_type=metrics.content_type)

    if config.ui:
        console.add_routes(app, tasks, error)
    app.state.config, app.state.tasks, app.state.pool = config, tasks, pool
    return app


def _client(request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown"


def _timed_protocol(read_timeout: float):
    """uvicorn's h11 protocol with a deadline for each request head (uvicorn has none: a client that
    connects and sends nothing, or a header a byte at a time, held its connection forever)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._head_timer = self.loop.call_later(read_timeout, self._head_timeout)

        def _head_timeout(self):
            if not self.transport.is_closing():
                log.warning("closed a connection from %s: no complete request within %g s",
                            "%s:%d" % self.client if self.client else "unknown", read_timeout)
                self.transport.close()

        def handle_events(self):
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:        # a complete request head arrived
                self._head_timer.cancel()

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing():   # the next request on this connection gets its own deadline
                self._head_timer.cancel()
                self._head_timer = self.loop.call_later(read_timeout, self._head_timeout)

        def connection_lost(self, exc):
            self._head_timer.cancel()
            super().connection_lost(exc)

    return TimedH11Protocol


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
    parser.add_argument("--time-limit", type=float, default=env.time_limit_s, metavar="SECONDS",
                        help="per-request inference limit; beyond: 503 and the worker is stopped (default 60)")
    parser.add_argument("--read-timeout", type=float, default=env.read_timeout_s, metavar="SECONDS",
                        help="to receive a request head and body (default 30)")
    parser.add_argument("--api-key", default=env.api_key, help="require 'Authorization: Bearer KEY' on every route but "
                        "/health and /hello-world (default: EDGESIGHT_API_KEY; prefer the variable: flags show in `ps`)")
    parser.add_argument("--show-paths", action="store_true", help="show local bundle paths in /v1/models and /health")
    parser.add_argument("--no-ui", dest="ui", action="store_false", default=env.ui, help="no web console at /ui")
    add_runtime_arguments(parser, backend=False, device=env.device, threads=env.threads)


def _return_large_buffers_to_os(threshold: int = 1 << 20) -> bool:
    """glibc raises its mmap threshold to the size of each large block freed, so after a few 10 MB request bodies
    such blocks come from the heap and stay resident (the soak's RSS rose ~120 MB under 8 concurrent 10 MB prompts
    and never came back). A fixed threshold keeps every block >= 1 MB in its own mapping, unmapped on free.
    No-op off glibc, or when the operator set MALLOC_MMAP_THRESHOLD_ themselves."""
    if sys.platform != "linux" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    import ctypes

    try:
        return ctypes.CDLL(None).mallopt(-3, threshold) == 1   # -3: M_MMAP_THRESHOLD (malloc.h)
    except (OSError, AttributeError):   # musl and other libcs have no mallopt
        return False


def main(args) -> None:
    uvicorn = require("uvicorn", "serve")
    _return_large_buffers_to_os()
    models = dict(ServeConfig.from_env().models)
    for item in args.model:
        task, sep, path = item.partition("=")
        if not sep:
            raise InputError(f"--model expects TASK=BUNDLE, got {item!r}")
        models[task] = path
    config = ServeConfig(host=args.host, port=args.port, threads=args.threads, concurrency=args.concurrency,
                         queue=args.queue, max_body_mb=args.max_body_mb, models=models,
                         caption_samples=args.caption_samples, device=args.device, time_limit_s=args.time_limit,
                         read_timeout_s=args.read_timeout, api_key=args.api_key, show_paths=args.show_paths,
                         ui=args.ui).check()
    logging.basicConfig(format="edgesight serve: %(levelname)s %(message)s", level=logging.INFO)
    if not config.api_key and not _loopback(config.host):
        log.warning("binding %s without an API key: anyone who can reach this port can use the models; "
                    "set EDGESIGHT_API_KEY (or --api-key) or bind 127.0.0.1", config.host)
    app = create_app(config)
    settings = {k: v for k, v in asdict(config).items() if k not in ("models", "api_key")} | {"auth": bool(config.api_key)}
    print(f"edgesight serve: http://{config.host}:{config.port} tasks ready: {', '.join(app.state.tasks) or 'none'}; "
          f"settings {json.dumps(settings)}", file=sys.stderr, flush=True)
    if config.ui:
        print(f"edgesight serve: web console at http://{config.host}:{config.port}/ui", file=sys.stderr, flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_keep_alive=30,
                http=_timed_protocol(config.read_timeout_s), limit_concurrency=max(64, 4 * (config.concurrency + config.queue)),
                timeout_graceful_shutdown=int(config.time_limit_s) + 5)
    # A worker stuck in native code must not keep the process alive after SIGTERM (daemon threads
    # already do not block exit; this also skips interpreter teardown racing with them).
    sys.stderr.flush()
    os._exit(0)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:   # a host name: it may resolve beyond this machine
        return False
