"""`edgesight serve` as a real uvicorn server on 127.0.0.1 in a subprocess: the seed's routes and
shapes, the task routes, /health, and bad requests answered 4xx while the server keeps serving."""
import base64
import io
import threading

import httpx
import pytest
from PIL import Image
from skimage import data

from benchmarks.serve_load import run_load, start_server as _start, stop_server as stop


def start_server(home, *args, env=None):
    """`edgesight serve` with EDGESIGHT_HOME=home (so only the bundles we pass are there)."""
    return _start(list(args), env={"EDGESIGHT_HOME": str(home), **(env or {})})


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


@pytest.mark.slow
def test_load_default_model_no_errors_flat_memory(tmp_path):
    """8 concurrent clients on the embedded default captioner (the real EfficientNet-Lite0), bounded
    in count and time; the full 8 x 500 run is benchmarks/serve_load.py (figures in docs/captioning.md)."""
    from edgesight.training.captioning import build_default as build

    build(tmp_path / "bundles" / "caption", threads=1, progress=False)
    proc, url = start_server(tmp_path, "--threads", "1")
    try:
        r = run_load(url, proc.pid, clients=8, requests=40, max_seconds=240, warmup=40)
    finally:
        stop(proc)
    assert r["errors"] == 0, r["first_errors"]
    assert r["completed"] >= 8 * 10 and r["latency_ms"]["p50"] <= r["latency_ms"]["p95"]
    assert r["rss_growth_pct"] < 10, r["rss_mb"]
