"""Load test of `edgesight serve` on 127.0.0.1: N concurrent clients x M seed requests (POST / with a
base64 photo), bounded in count and time. Reports errors, latency p50/p95/p99, throughput and the
server's resident memory after warm-up vs at the end (growth must stay < 10%).

    python -m benchmarks.serve_load --clients 8 --requests 500 --out serve_load.json
    python -m benchmarks.serve_load --model caption=bundles/blip-int4 --clients 4 --requests 50

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

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done.set()
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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=500, help="per client")
    p.add_argument("--max-seconds", type=float, default=1800, help="stop sending after this long")
    p.add_argument("--threads", type=int, default=None, help="server threads per inference")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--queue", type=int, default=32)
    p.add_argument("--model", action="append", default=[], metavar="TASK=BUNDLE")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    server_args = ["--concurrency", str(args.concurrency), "--queue", str(args.queue)]
    server_args += ["--threads", str(args.threads)] if args.threads else []
    for m in args.model:
        server_args += ["--model", m]
    proc, url = start_server(server_args)
    try:
        import httpx

        result = header("serve-load", vars(args)) | {"server": {"args": server_args, "models": httpx.get(url + "/v1/models").json()}}
        result |= run_load(url, proc.pid, clients=args.clients, requests=args.requests, max_seconds=args.max_seconds)
    finally:
        stop_server(proc)
    if args.out:
        write_json(result, Path(args.out))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
