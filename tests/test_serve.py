"""`edgesight serve` as a real uvicorn server on 127.0.0.1 in a subprocess: the seed's routes and
shapes, the task routes, /health, and bad requests answered 4xx while the server keeps serving."""
import base64
import io
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from PIL import Image
from skimage import data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home, *args, env=None, timeout=120):
    """Run `edgesight serve` with EDGESIGHT_HOME=home; return (process, base URL) once /health answers."""
    port = _free_port()
    full_env = {**os.environ, "EDGESIGHT_HOME": str(home), **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "edgesight.cli", "serve", "--port", str(port), *args],
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {proc.stdout.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not answer /health in time")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def b64_image(array, fmt="JPEG") -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def server(blip_bundle, tmp_path_factory):
    proc, url = start_server(tmp_path_factory.mktemp("home"), "--model", f"caption={blip_bundle.path}",
                             "--max-body-mb", "2", "--threads", "1")
    yield url
    stop(proc)


def test_seed_routes(server):
    r = httpx.get(server + "/hello-world")
    assert r.status_code == 200 and "Hello" in r.text
    r = httpx.post(server + "/", json={"image": b64_image(data.chelsea())}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"tags", "captions", "english_captions"}
    assert len(body["captions"]) == 1 and len(body["english_captions"]) == 5
    assert body["tags"] and all(isinstance(t, str) and 0 <= s <= 1 for t, s in body["tags"])


def test_task_routes_health_and_models(server):
    r = httpx.post(server + "/v1/caption", json={"image": b64_image(data.coffee())}, timeout=60)
    assert r.status_code == 200 and set(r.json()) == {"caption", "samples", "tags"}
    health = httpx.get(server + "/health").json()
    assert health["tasks"]["caption"] == "ready"
    # the other tasks have no default bundle in this EDGESIGHT_HOME: reported, not fatal
    others = {k: v for k, v in health["tasks"].items() if k != "caption"}
    assert others and all(v != "ready" for v in others.values())
    r = httpx.post(server + f"/v1/{next(iter(others))}", json={"text": "x"})
    assert r.status_code == 503 and "not available" in r.json()["error"]
    assert httpx.post(server + "/v1/nope", json={}).status_code == 404
    info = httpx.get(server + "/v1/models").json()["caption"]
    assert info["model"] == "blip" and info["tag_scorer"] == "clip" and info["threads"] == 1


BAD = {
    "corrupt base64": ({"json": {"image": "@@@not-base64@@@"}}, 400, "base64"),
    "not an image": ({"json": {"image": base64.b64encode(b"hello, I am text").decode()}}, 400, "not a recognised image"),
    "50 megapixels": ({"json": {"image": b64_image(__import__("numpy").zeros((6250, 8000), "uint8"), "PNG")}}, 400, "MP"),
    "empty body": ({"content": b"", "headers": {"content-type": "application/json"}}, 400, "empty body"),
    "wrong content type": ({"content": b"image=abc", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 415, "application/json"),
    "not JSON": ({"content": b"{oops", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    "missing key": ({"json": {"picture": "abc"}}, 400, "image"),
    "too large": ({"content": b"{\"image\": \"" + b"A" * (3 << 20) + b"\"}", "headers": {"content-type": "application/json"}}, 413, "limit"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_4xx_with_a_reason_and_server_keeps_serving(server, case):
    kwargs, status, reason = BAD[case]
    r = httpx.post(server + "/", timeout=60, **kwargs)
    assert r.status_code == status, r.text
    assert reason in r.json()["error"]
    ok = httpx.post(server + "/", json={"image": b64_image(data.astronaut())}, timeout=60)
    assert ok.status_code == 200


def test_full_queue_answers_503(blip_bundle, tmp_path):
    proc, url = start_server(tmp_path, "--model", f"caption={blip_bundle.path}", "--concurrency", "1",
                             "--queue", "0", "--threads", "1", "--caption-samples", "5")
    try:
        body = {"image": b64_image(data.astronaut())}
        statuses, start = [], threading.Barrier(8)

        def client():
            start.wait()
            r = httpx.post(url + "/", json=body, timeout=120)
            statuses.append((r.status_code, r.headers.get("retry-after")))

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = [c for c, _ in statuses]
        assert set(codes) <= {200, 503} and 200 in codes and 503 in codes
        assert all(ra == "1" for c, ra in statuses if c == 503)
        assert httpx.get(url + "/health").json()["rejected"] == codes.count(503)
    finally:
        stop(proc)


def test_settings_from_environment(blip_bundle, tmp_path):
    proc, url = start_server(tmp_path, env={"EDGESIGHT_MODEL_CAPTION": str(blip_bundle.path), "total_captions_number": "3",
                                            "EDGESIGHT_QUEUE": "7"})
    try:
        r = httpx.post(url + "/", json={"image": b64_image(data.chelsea())}, timeout=60)
        assert r.status_code == 200 and len(r.json()["english_captions"]) == 3
        assert httpx.get(url + "/health").json()["limits"]["queue"] == 7
    finally:
        stop(proc)
