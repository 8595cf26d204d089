"""Load test of `edgesight serve` on 127.0.0.1: N concurrent clients x M seed requests (POST / with a
base64 photo), bounded in count and time. Reports errors, latency p50/p95/p99, throughput and the
server's resident memory after warm-up vs at the end (growth must stay < 10%).

    python -m benchmarks.serve_load --clients 8 --requests 500 --out serve_load.json
    python -m benchmarks.serve_load --model caption=bundles/blip-int4 --clients 4 --requests 50

The soak (`--mixed`): every task's route plus the seed's, with a share of hostile requests (the
freezing describe label, a 10 MB prompt, JSON nested 10k deep, a 5000-digit number, invalid UTF-8, a
lone surrogate, a 144 MP JPEG header, a PNG bomb, an oversized batch, bad base64, a wrong content
type, ...). Passes when there is no 5xx other than time-limit 503s, every hostile request gets its
4xx, /health answers throughout and RSS grows < 10 % after warm-up; p50/p95/p99 per route.

    python -m benchmarks.serve_load --mixed --clients 8 --requests 2000 --hostile 0.1 --out soak.json

With no --model the server runs the embedded default bundles ($EDGESIGHT_HOME; `edgesight build-defaults`).
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.report import header, write_json


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], env: dict | None = None, timeout: float = 180):
    """`edgesight serve` in a subprocess on a free port; returns (process, url) once /health answers."""
    import httpx

    port = _free_port()
    # The log goes to a file, not a pipe: nobody reads a pipe while the server runs, and a full one blocks it.
    log = tempfile.NamedTemporaryFile(prefix="edgesight-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "edgesight.cli", "serve", "--port", str(port), *args],
                            env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = Path(log.name)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {server_log(proc)[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not answer /health within {timeout:.0f} s")


def stop_server(proc) -> float | None:
    """SIGTERM, then SIGKILL after 10 s; returns the seconds SIGTERM took, None when it had to be killed."""
    t0 = time.monotonic()
    proc.terminate()
    try:
        proc.wait(10)
        return time.monotonic() - t0
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def server_log(proc) -> str:
    """What the server printed so far."""
    return proc.log_path.read_text(encoding="utf-8", errors="replace")


def photo_b64() -> str:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, "JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(round(q / 100 * (len(sorted_values) - 1))))]


def _run_clients(client, clients: int, watcher, done: threading.Event) -> float:
    """client(k) on `clients` threads with `watcher` alongside until they finish; the wall time."""
    watch = threading.Thread(target=watcher, daemon=True)
    watch.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done.set()
    watch.join()
    return wall


def run_load(url: str, pid: int, *, clients: int, requests: int, max_seconds: float, warmup: int = 20) -> dict:
    """`clients` threads each send `requests` seed requests (stopping early after `max_seconds`)."""
    import httpx
    import psutil

    body = {"image": photo_b64()}
    server = psutil.Process(pid)
    with httpx.Client(timeout=120) as c:              # warm-up: caches, arenas, first-call allocations
        for _ in range(warmup):
            c.post(url + "/", json=body).raise_for_status()
    rss_after_warmup = server.memory_info().rss
    latencies, errors, rss_samples, lock = [], [], [rss_after_warmup], threading.Lock()
    deadline = time.monotonic() + max_seconds
    done = threading.Event()

    def client():
        with httpx.Client(timeout=120) as c:
            for _ in range(requests):
                if time.monotonic() > deadline:
                    return
                t0 = time.perf_counter()
                try:
                    r = c.post(url + "/", json=body)
                    ok = r.status_code == 200 and set(r.json()) == {"tags", "captions", "english_captions"}
                    err = None if ok else f"{r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as exc:
                    err = f"{type(exc).__name__}: {exc}"
                with lock:
                    (errors.append(err) if err else latencies.append(time.perf_counter() - t0))

    def sample_rss():
        while not done.wait(1.0):
            rss_samples.append(server.memory_info().rss)

    wall = _run_clients(lambda k: client(), clients, sample_rss, done)
    rss_end = server.memory_info().rss
    lat = sorted(latencies)
    return {"clients": clients, "requests_per_client": requests, "completed": len(lat), "errors": len(errors),
            "first_errors": errors[:5], "stopped_by_time_limit": len(lat) + len(errors) < clients * requests,
            "wall_s": round(wall, 1), "throughput_rps": round(len(lat) / wall, 2),
            "latency_ms": {"p50": round(_percentile(lat, 50) * 1000, 1), "p95": round(_percentile(lat, 95) * 1000, 1),
                           "p99": round(_percentile(lat, 99) * 1000, 1)},
            "rss_mb": {"after_warmup": round(rss_after_warmup / 2**20, 1), "end": round(rss_end / 2**20, 1),
                       "max": round(max(rss_samples + [rss_end]) / 2**20, 1)},
            "rss_growth_pct": round(100 * (rss_end - rss_after_warmup) / rss_after_warmup, 2)}


# --- the soak: mixed routes, hostile inputs --------------------------------------------------------

def _claiming(fmt: str, width: int, height: int) -> bytes:
    """A small real image whose header claims width x height (the pixel guard must read the header)."""
    import struct

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB" if fmt == "JPEG" else "L", (64, 48), 128).save(buf, fmt)
    data = bytearray(buf.getvalue())
    if fmt == "JPEG":
        sof = data.index(b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    else:
        data[16:24] = struct.pack(">II", width, height)
    return bytes(data)


def soak_requests() -> dict:
    """name -> (path, body bytes, content type, weight, expected statuses). Built once; weights are shares of
    the normal (name without "!") or hostile ("!") traffic."""
    def js(obj) -> bytes:
        return json.dumps(obj).encode()
    photo = photo_b64()
    det = {"detections": [{"label": "plastic", "confidence": 0.92}, {"label": "plastic", "confidence": 0.88},
                          {"label": "metal", "confidence": 0.75}], "scene": {"class": "grass", "confidence": 0.95}}
    b64 = lambda data: base64.b64encode(data).decode()
    ok = (200,)
    return {
        "keywords": ("/v1/keywords", js({"prompt": "Segment the cats and dogs but not the people"}), "application/json", 30, ok),
        "keywords batch": ("/v1/keywords", js({"prompts": ["find the red cars", "ignore the chairs", "bottles and cups"]}),
                           "application/json", 10, ok),
        "keywords vocabulary": ("/v1/keywords", js({"prompt": "two automobiles and a monitor", "vocabulary": "objects365"}),
                                "application/json", 5, ok),
        "describe": ("/v1/describe", js(det), "application/json", 25, ok),
        "products": ("/v1/products", js({"image": photo}), "application/json", 20, ok),
        "caption": ("/v1/caption", js({"image": photo}), "application/json", 5, ok),
        "seed caption": ("/", js({"image": photo}), "application/json", 5, ok),
        "!freezing label": ("/v1/describe", js({"detections": [{"label": "бутылка", "confidence": 0.9},
                                                               {"label": "瓶子", "confidence": 0.9}]}), "application/json", 3, ok),
        "!10 MB prompt": ("/v1/keywords", js({"prompt": "cats " * 2_000_000}), "application/json", 1, (400,)),
        "!nested 10k": ("/v1/describe", b"[" * 10_000 + b"]" * 10_000, "application/json", 1, (400,)),
        "!5000-digit number": ("/v1/describe", b'{"detections": [{"label": "x", "confidence": ' + b"9" * 5000 + b"}]}",
                               "application/json", 1, (400,)),
        "!invalid UTF-8": ("/v1/keywords", b'{"prompt": "caf\xe9"}', "application/json", 1, (400,)),
        "!lone surrogate": ("/v1/keywords", b'{"prompt": "bad \\ud800 text"}', "application/json", 1, (400,)),
        "!prompt not a string": ("/v1/keywords", js({"prompt": {"$gt": ""}}), "application/json", 1, (400,)),
        "!batch of 500": ("/v1/keywords", js({"prompts": ["cats"] * 500}), "application/json", 1, (400,)),
        "!nan confidence": ("/v1/describe", b'{"detections": [{"label": "x", "confidence": NaN}]}', "application/json", 1, (400,)),
        "!144 MP JPEG": ("/v1/products", js({"image": b64(_claiming("JPEG", 12_000, 12_000))}), "application/json", 1, (400,)),
        "!PNG bomb": ("/", js({"image": b64(_claiming("PNG", 200_000, 200_000))}), "application/json", 1, (400,)),
        "!bad base64": ("/v1/caption", js({"image": "@@@ not base64 @@@"}), "application/json", 1, (400,)),
        "!wrong content type": ("/v1/keywords", b"prompt=cats", "application/x-www-form-urlencoded", 1, (415,)),
        "!unknown route": ("/v1/nope", js({}), "application/json", 1, (404,)),
    }


def run_mixed(url: str, pid: int, *, clients: int, requests: int, hostile: float, max_seconds: float,
              warmup: int = 40, seed: int = 0, headers: dict | None = None) -> dict:
    """`clients` threads x `requests` requests drawn from soak_requests() (a `hostile` share of hostile ones)."""
    import random

    import httpx
    import psutil

    table = soak_requests()
    normal = [n for n in table if not n.startswith("!")]
    bad = [n for n in table if n.startswith("!")]
    server = psutil.Process(pid)
    headers = headers or {}

    def send(c, name):
        path, body, ctype, _, _ = table[name]
        return c.post(url + path, content=body, headers={"content-type": ctype, **headers})

    with httpx.Client(timeout=120) as c:   # warm-up: every route (and the hostile ones) a few times
        for i in range(warmup):
            send(c, (normal + bad)[i % len(normal + bad)])
    rss_after_warmup = server.memory_info().rss
    by_name: dict[str, list] = {n: [] for n in table}
    failures, statuses, lock = [], {}, threading.Lock()
    rss_samples, health = [rss_after_warmup], {"checks": 0, "failed": 0, "max_ms": 0.0}
    trace = []   # (seconds, requests answered, RSS MB) every 30 s: a leak climbs with requests, a settling allocator flattens
    start = time.monotonic()
    deadline, done = time.monotonic() + max_seconds, threading.Event()

    def client(k: int):
        rng = random.Random(seed * 1000 + k)
        with httpx.Client(timeout=120) as c:
            for _ in range(requests):
                if time.monotonic() > deadline:
                    return
                pool = bad if rng.random() < hostile else normal
                name = rng.choices(pool, weights=[table[n][3] for n in pool])[0]
                t0 = time.perf_counter()
                try:
                    r = send(c, name)
                    status, kind = r.status_code, (r.json().get("type") if r.status_code >= 400 else None)
                except httpx.HTTPError as exc:
                    status, kind = type(exc).__name__, None
                dt = time.perf_counter() - t0
                with lock:
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    by_name[name].append(dt)
                    if status not in table[name][4] and not (status == 503 and kind == "TimeLimitExceeded"):
                        failures.append(f"{name}: {status} {kind}")

    def watch():
        with httpx.Client(timeout=30) as c:
            while not done.wait(1.0):
                rss_samples.append(server.memory_info().rss)
                if health["checks"] % 30 == 0:
                    with lock:
                        answered = sum(len(v) for v in by_name.values())
                    trace.append([round(time.monotonic() - start), answered, round(rss_samples[-1] / 2**20, 1)])
                t0 = time.perf_counter()
                try:
                    ok = c.get(url + "/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                health["checks"] += 1
                health["failed"] += not ok
                health["max_ms"] = max(health["max_ms"], round((time.perf_counter() - t0) * 1000, 1))

    wall = _run_clients(client, clients, watch, done)
    rss_end = server.memory_info().rss
    all_lat = sorted(x for v in by_name.values() for x in v)
    ms = lambda v, q: round(_percentile(sorted(v), q) * 1000, 1)
    server_health = httpx.get(url + "/health", headers=headers).json()
    fivexx = sum(n for s, n in statuses.items() if s.startswith("5"))
    return {"clients": clients, "requests_per_client": requests, "hostile_share": hostile, "sent": len(all_lat),
            "stopped_by_time_limit": len(all_lat) < clients * requests, "wall_s": round(wall, 1),
            "throughput_rps": round(len(all_lat) / wall, 2), "statuses": dict(sorted(statuses.items())),
            "time_limit_503": server_health["workers"]["time_limit_exceeded"], "other_5xx": fivexx - server_health["workers"]["time_limit_exceeded"],
            "unexpected": len(failures), "first_unexpected": failures[:10],
            "latency_ms": {"p50": ms(all_lat, 50), "p95": ms(all_lat, 95), "p99": ms(all_lat, 99)},
            "routes": {n: {"n": len(v), "p50_ms": ms(v, 50), "p95_ms": ms(v, 95)} for n, v in by_name.items() if v},
            "health_during_run": health, "workers": server_health["workers"],
            "rss_mb": {"after_warmup": round(rss_after_warmup / 2**20, 1), "end": round(rss_end / 2**20, 1),
                       "max": round(max(rss_samples + [rss_end]) / 2**20, 1)},
            "rss_growth_pct": round(100 * (rss_end - rss_after_warmup) / rss_after_warmup, 2),
            "rss_trace": {"columns": ["seconds", "answered", "rss_mb"], "rows": trace}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=500, help="per client")
    p.add_argument("--max-seconds", type=float, default=1800, help="stop sending after this long")
    p.add_argument("--threads", type=int, default=None, help="server threads per inference")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--queue", type=int, default=32)
    p.add_argument("--model", action="append", default=[], metavar="TASK=BUNDLE")
    p.add_argument("--mixed", action="store_true", help="the soak: every route, with --hostile share of hostile inputs")
    p.add_argument("--hostile", type=float, default=0.1, help="share of hostile requests in --mixed (default 0.1)")
    p.add_argument("--time-limit", type=float, default=None, help="server per-request time limit (s)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    server_args = ["--concurrency", str(args.concurrency), "--queue", str(args.queue)]
    server_args += ["--threads", str(args.threads)] if args.threads else []
    server_args += ["--time-limit", str(args.time_limit)] if args.time_limit else []
    for m in args.model:
        server_args += ["--model", m]
    proc, url = start_server(server_args)
    try:
        import httpx

        result = header("serve-soak" if args.mixed else "serve-load", vars(args)) | {
            "server": {"args": server_args, "models": httpx.get(url + "/v1/models").json()}}
        if args.mixed:
            result |= run_mixed(url, proc.pid, clients=args.clients, requests=args.requests, hostile=args.hostile,
                                max_seconds=args.max_seconds)
        else:
            result |= run_load(url, proc.pid, clients=args.clients, requests=args.requests, max_seconds=args.max_seconds)
    finally:
        result_sigterm = stop_server(proc)
    result["sigterm_s"] = None if result_sigterm is None else round(result_sigterm, 2)
    result["server_log_tracebacks"] = server_log(proc).count("Traceback")
    if args.out:
        write_json(result, Path(args.out))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
