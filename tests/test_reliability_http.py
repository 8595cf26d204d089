"""Issue 12 over HTTP on a real uvicorn server (subprocess) and the inference workers on real threads:
time limit with worker recovery, SIGTERM always ends the process, API key, paths hidden, /metrics,
request read timeouts, disconnects logged as one line, hostile bodies answered 4xx."""
import asyncio
import base64
import json
import socket
import subprocess
import sys
import time

import httpx
import pytest

from benchmarks.serve_load import server_log, start_server as _start, stop_server
from edgesight.workers import InferencePool, TimeLimitExceeded
from test_reliability import jpeg_claiming, png_claiming
from test_serve import b64_image

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def start_server(home, *args, env=None):
    return _start(list(args), env={"EDGESIGHT_HOME": str(home), **(env or {})})


def chelsea():
    from skimage import data
    return b64_image(data.chelsea())


@pytest.fixture(scope="module")
def secured(blip_bundle, tmp_path_factory):
    """Bound beyond loopback with a key (from the environment), short read timeout."""
    proc, url = start_server(tmp_path_factory.mktemp("home"), "--model", f"caption={blip_bundle.path}", "--threads", "1",
                             "--host", "0.0.0.0", "--read-timeout", "2", env={"EDGESIGHT_API_KEY": KEY})
    yield proc, url
    stop_server(proc)


# --- workers: time limit, recovery, replacement, exit ---------------------------------------------

def test_a_spinning_job_is_stopped_and_its_worker_recovered():
    async def scenario():
        pool = InferencePool(1, time_limit=0.3, grace=2.0)

        def spin():
            while True:
                pass
        with pytest.raises(TimeLimitExceeded):
            await pool.run(spin)
        for _ in range(100):
            if pool.stats()["recovered"]:
                break
            await asyncio.sleep(0.05)
        assert await pool.run(lambda: 42) == 42
        return pool.stats()
    stats = asyncio.run(scenario())
    assert stats["time_limit_exceeded"] == 1 and stats["recovered"] == 1 and stats["replaced"] == 0 and stats["workers"] == 1


def test_a_job_stuck_outside_python_gets_its_worker_replaced():
    async def scenario():
        pool = InferencePool(1, time_limit=0.2, grace=0.3)
        with pytest.raises(TimeLimitExceeded):
            await pool.run(lambda: time.sleep(5))     # a blocking C call: the raised exception waits for it
        await asyncio.sleep(0.8)
        assert await pool.run(lambda: "served") == "served"   # the replacement serves at once
        return pool.stats()
    stats = asyncio.run(scenario())
    assert stats["replaced"] == 1 and stats["stuck"] == 1 and stats["workers"] == 1


def test_a_stuck_worker_never_blocks_process_exit():
    code = ("import asyncio, time\nfrom edgesight.workers import InferencePool, TimeLimitExceeded\n"
            "async def main():\n    pool = InferencePool(1, 0.1, grace=0.1)\n"
            "    try:\n        await pool.run(lambda: time.sleep(60))\n    except TimeLimitExceeded:\n        print('limit')\n"
            "asyncio.run(main())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "limit" in out.stdout


def test_time_limit_answers_503_health_reports_and_sigterm_ends(blip_bundle, tmp_path):
    proc, url = start_server(tmp_path, "--model", f"caption={blip_bundle.path}", "--threads", "1", "--time-limit", "0.001")
    try:
        for _ in range(3):   # no captioning (base64 + JPEG + BLIP + CLIP) finishes in a millisecond
            r = httpx.post(url + "/", json={"image": chelsea()}, timeout=60)
            assert r.status_code == 503 and r.json()["type"] == "TimeLimitExceeded" and r.headers["retry-after"] == "1"
        time.sleep(2.5)
        health = httpx.get(url + "/health").json()
        assert health["workers"]["time_limit_exceeded"] >= 1 and health["limits"]["time_limit_s"] == 0.001
        assert health["workers"]["recovered"] + health["workers"]["replaced"] >= 1 and health["workers"]["workers"] == 1
        assert httpx.get(url + "/hello-world").status_code == 200
    finally:
        took = stop_server(proc)
    assert took is not None and took < 10, "SIGTERM did not end the server"
    assert "Traceback" not in server_log(proc)


# --- API key, paths, warnings, metrics ------------------------------------------------------------

def test_api_key_guards_every_route_but_health_and_hello(secured):
    proc, url = secured
    assert httpx.get(url + "/hello-world").status_code == 200
    assert httpx.get(url + "/health").json()["auth"] is True
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        r = httpx.post(url + "/", json={"image": chelsea()}, headers=headers, timeout=60)
        assert r.status_code == 401 and r.json()["type"] == "Unauthorized" and r.headers["www-authenticate"].startswith("Bearer")
        assert httpx.get(url + "/v1/models", headers=headers).status_code == 401
        assert httpx.get(url + "/metrics", headers=headers).status_code == 401
    r = httpx.post(url + "/", json={"image": chelsea()}, headers=AUTH, timeout=60)
    assert r.status_code == 200 and set(r.json()) == {"tags", "captions", "english_captions"}


def test_models_hide_local_paths_unless_asked(secured, blip_bundle, tmp_path):
    _, url = secured
    info = httpx.get(url + "/v1/models", headers=AUTH).json()["caption"]
    text = json.dumps(info)
    assert str(blip_bundle.path) not in text and info["bundle"] == blip_bundle.path.name
    health = json.dumps(httpx.get(url + "/health").json())
    assert str(tmp_path.parent) not in health   # the missing tasks' reasons name no local directory
    proc, url2 = start_server(tmp_path, "--model", f"caption={blip_bundle.path}", "--threads", "1", "--show-paths")
    try:
        assert httpx.get(url2 + "/v1/models").json()["caption"]["bundle"] == str(blip_bundle.path)
    finally:
        stop_server(proc)
    assert "without an API key" not in server_log(proc)   # loopback: no warning


def test_binding_beyond_loopback_without_a_key_warns(blip_bundle, tmp_path, secured):
    proc, url = start_server(tmp_path, "--model", f"caption={blip_bundle.path}", "--threads", "1", "--host", "0.0.0.0")
    stop_server(proc)
    assert "without an API key" in server_log(proc)
    assert "without an API key" not in server_log(secured[0])
    assert KEY not in server_log(secured[0])   # the key is never printed with the settings


def test_metrics_in_prometheus_text_format(secured):
    _, url = secured
    httpx.post(url + "/", json={"image": "@@"}, headers=AUTH)
    r = httpx.get(url + "/metrics", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    requests = {(s.labels["route"], s.labels["status"]) for s in families["edgesight_requests"].samples}
    assert ("/", "400") in requests and ("/", "401") in requests
    assert {"edgesight_request_duration_seconds", "edgesight_queue_depth", "edgesight_rejected",
            "edgesight_model_load_seconds", "edgesight_workers", "edgesight_time_limit_events"} <= set(families)
    load = {s.labels["task"]: s.value for s in families["edgesight_model_load_seconds"].samples}
    assert load["caption"] > 0


# --- hostile bodies, read timeouts, disconnects ---------------------------------------------------

HOSTILE = {
    "deep JSON": (b"[" * 10_000 + b"]" * 10_000, "nested"),
    "5000-digit number": (b'{"image": ' + b"9" * 5000 + b"}", "digits"),
    "invalid UTF-8": (b'{"image": "\xff\xfe"}', "UTF-8"),
    "NaN": (b'{"image": NaN}', "NaN"),
    "image not a string": (b'{"image": [1, 2]}', "base64"),
    "144 MP JPEG": (json.dumps({"image": base64.b64encode(jpeg_claiming(12_000, 12_000)).decode()}).encode(), "MP"),
    "PNG bomb": (json.dumps({"image": base64.b64encode(png_claiming(200_000, 200_000)).decode()}).encode(), "MP"),
    "lone surrogate": (b'{"image": "\\ud800"}', "base64"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_bodies_get_a_typed_4xx_and_the_server_keeps_serving(secured, case):
    _, url = secured
    body, says = HOSTILE[case]
    for route in ("/", "/v1/caption"):
        r = httpx.post(url + route, content=body, headers={"content-type": "application/json", **AUTH}, timeout=60)
        assert r.status_code == 400, r.text
        assert says in r.json()["error"] and r.json()["type"]
    assert httpx.get(url + "/hello-world").status_code == 200


def test_silent_and_slow_connections_are_closed(secured):
    proc, url = secured
    port = int(url.rsplit(":", 1)[1])
    silent = socket.create_connection(("127.0.0.1", port))
    silent.settimeout(15)
    t0 = time.monotonic()
    assert silent.recv(100) == b""                 # closed by the server, not held open
    assert time.monotonic() - t0 < 12
    slow = socket.create_connection(("127.0.0.1", port))
    slow.settimeout(15)
    slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\nAuthorization: Bearer " + KEY.encode()
                 + b"\r\ncontent-length: 1000\r\n\r\n{\"image\": ")
    answer = slow.recv(4096)
    assert b" 408 " in answer.split(b"\r\n")[0]
    silent.close(), slow.close()
    assert "no complete request within" in server_log(proc)


def test_client_disconnect_is_one_log_line(secured):
    proc, url = secured
    port = int(url.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/caption HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\nAuthorization: Bearer "
              + KEY.encode() + b"\r\ncontent-length: 100000\r\n\r\n{\"image\": \"AAAA")
    time.sleep(0.3)
    s.close()
    time.sleep(1.0)
    assert httpx.get(url + "/hello-world").status_code == 200
    log = server_log(proc)
    assert "went away" in log and "Traceback" not in log
