"""The web console of `edgesight serve` (GET /ui): served by edgesight itself (no CDN), open without the API key
while everything it fetches needs it, off with --no-ui; and, in a real headless Chromium (Debian's, driven by
Selenium) against a real `edgesight serve` with the default bundles, every tab run on the sample inputs shows
what the JSON route answers, a bad upload shows the server's reason. Screenshots: .cache/console/<task>.png."""
import base64
import io
import re
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

from edgesight.serve import ServeConfig, create_app

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / ".cache" / "console"
KEY = "console-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


# --- in process: routes, headers, key, --no-ui (no bundles needed) ------------------------------------
@pytest.fixture
def client(request):
    from fastapi.testclient import TestClient

    config = ServeConfig(**getattr(request, "param", {}))
    with TestClient(create_app(config, {}, {"keywords": "not loaded in this test"})) as c:
        yield c


@pytest.mark.parametrize("client", [{"api_key": KEY}], indirect=True)
def test_page_is_open_and_self_contained_what_it_fetches_needs_the_key(client):
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    for asset in ("/ui/console.js", "/ui/console.css"):
        assert f'"{asset}"' in page.text
        r = client.get(asset)
        assert r.status_code == 200 and r.text
    # offline: no asset names another host (no CDN, no web fonts)
    for text in (page.text, client.get("/ui/console.js").text, client.get("/ui/console.css").text):
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text)
    assert client.get("/ui/samples").status_code == 401
    assert client.get("/ui/catalog-photo", params={"title": "x"}).status_code == 401
    samples = client.get("/ui/samples", headers=AUTH).json()
    assert set(samples) == {"keywords", "describe", "caption", "products"}
    assert samples["keywords"]["kind"] == "text" and samples["keywords"]["samples"]
    assert all("/" not in name for name in samples["caption"]["samples"])   # names, never local paths
    assert client.get("/hello-world").text == "Hello, World!"                 # the seed's route is untouched


def test_sample_and_catalogue_routes_refuse_what_they_do_not_have(client):
    for path in ("/ui/samples/keywords/0", "/ui/samples/caption/99", "/ui/samples/caption/-1", "/ui/samples/nope/0",
                 "/ui/catalog-photo?title=..%2F..%2Fetc%2Fpasswd", "/ui/catalog-photo"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["type"] == "NotFound", path
    r = client.get("/ui/samples/caption/0")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/")
    Image.open(io.BytesIO(r.content)).verify()


@pytest.mark.parametrize("client", [{"ui": False}], indirect=True)
def test_no_ui_turns_the_console_off(client):
    assert client.get("/ui").status_code == 404
    assert client.get("/ui/samples").status_code == 404
    assert client.get("/hello-world").status_code == 200


def test_no_ui_flag_and_environment(monkeypatch):
    import argparse

    from edgesight import serve

    parser = argparse.ArgumentParser()
    serve.add_cli_arguments(parser)
    assert parser.parse_args([]).ui is True and parser.parse_args(["--no-ui"]).ui is False
    monkeypatch.setenv("EDGESIGHT_UI", "0")
    assert ServeConfig.from_env().ui is False


# --- a real browser against a real server with the default bundles -------------------------------------
def _browser_paths():
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    return browser, shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    binary, driver = _browser_paths()
    if not (binary and driver):
        pytest.skip("no headless browser: Chromium and chromedriver are not installed "
                    "(scripts/setup.sh installs them; or apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,860",
                "--disable-gpu", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    d = webdriver.Chrome(options=options, service=Service(driver))
    yield d
    d.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from edgesight.defaults import default_bundle_dir

    missing = [t for t in ("keywords", "describe", "caption", "products") if not (default_bundle_dir(t) / "edgesight.json").is_file()]
    if missing:
        pytest.skip(f"default bundles not built: {missing} (run `edgesight build-defaults`)")
    from benchmarks.serve_load import start_server, stop_server

    proc, url = start_server(["--threads", "1"], env={"EDGESIGHT_API_KEY": KEY})
    yield url
    stop_server(proc)


def post(url, task, payload):
    r = httpx.post(f"{url}/v1/{task}", json=payload, headers=AUTH, timeout=120)
    return r.status_code, r.json()


class Page:
    """The console in the browser: open a tab, act, wait for the answer, read what it shows."""

    def __init__(self, driver, url):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.d, self.url, self.by, self.wait = driver, url, By, WebDriverWait(driver, 180)

    def open(self, task, key=KEY):
        self.d.get(f"{self.url}/ui#{task}")
        self.d.execute_script("sessionStorage.clear(); if (arguments[0]) sessionStorage.setItem('edgesight.apiKey', arguments[0]);", key)
        self.d.refresh()
        self.wait.until(lambda d: self.text("#server-text").endswith("ready") or self.text("#server-text") == "API key required")
        return self

    def all(self, css):
        return self.d.find_elements(self.by.CSS_SELECTOR, css)

    def one(self, css):
        return self.d.find_element(self.by.CSS_SELECTOR, css)

    def text(self, css):
        return self.one(css).text

    def texts(self, css):
        return [e.text for e in self.all(css)]

    def answer(self, task, action):
        """Do `action`, then wait for the task's answer (or error) to replace whatever was shown."""
        self.d.execute_script("document.getElementById(arguments[0]).dataset.state = 'waiting';", f"out-{task}")
        action()
        self.wait.until(lambda d: self.one(f"#out-{task}").get_attribute("data-state") in ("done", "error"))
        return self.one(f"#out-{task}").get_attribute("data-state")

    def meta(self, task):
        return {f: self.text(f'#out-{task} [data-field="{f}"] .v') for f in ("latency", "bundle", "precision", "backend")}

    def shot(self, task):
        """The whole page (the window grown to its height), then the window as it was."""
        SHOTS.mkdir(parents=True, exist_ok=True)
        size = self.d.get_window_size()
        height = self.d.execute_script("return document.documentElement.scrollHeight + outerHeight - innerHeight")
        self.d.set_window_size(size["width"], max(size["height"], height))
        self.d.save_screenshot(str(SHOTS / f"{task}.png"))
        self.d.set_window_size(size["width"], size["height"])


@pytest.fixture
def page(browser, server):
    return Page(browser, server)


def check_meta(page, task, server):
    info = httpx.get(f"{server}/v1/models", headers=AUTH).json()[task]
    meta = page.meta(task)
    assert re.fullmatch(r"\d+ ms", meta["latency"])
    assert meta["bundle"] == info["bundle"] and meta["precision"] == info["precision"]
    assert meta["backend"] == f"{info['backend']} · {info['device']}"


@pytest.mark.defaults
def test_the_page_asks_for_the_key_and_says_which_tasks_are_ready(page):
    page.open("keywords", key=None)
    assert page.text("#server-text") == "API key required"
    page.answer("keywords", lambda: page.one("#panel-keywords .run").click())
    assert page.text("#out-keywords .error-title") == "401 Unauthorized"
    assert "API key" in page.text("#out-keywords .error-message")
    page.one("#api-key").send_keys(KEY)
    page.one("#key-form button").click()
    page.wait.until(lambda d: page.text("#server-text") == "4 of 4 tasks ready")
    assert page.d.execute_script("return sessionStorage.getItem('edgesight.apiKey')") == KEY


@pytest.mark.defaults
def test_keywords_tab_shows_the_json_routes_answer(page, server):
    page.open("keywords")
    page.wait.until(lambda d: page.all("#panel-keywords .sample"))
    samples = page.all("#panel-keywords .sample")
    for i in range(len(samples)):
        page.all("#panel-keywords .sample")[i].click()
        prompt = page.one("#kw-prompt").get_attribute("value")
        assert page.answer("keywords", lambda: page.one("#panel-keywords .run").click()) == "done"
        assert page.texts("#out-keywords .chip") == post(server, "keywords", {"prompt": prompt})[1], prompt
    page.one("#kw-vocab").send_keys("cat, person")
    page.answer("keywords", lambda: page.one("#panel-keywords .run").click())
    status, body = post(server, "keywords", {"prompt": prompt, "vocabulary": ["cat", "person"]})
    assert status == 200 and page.texts("#out-keywords .chip") == body
    check_meta(page, "keywords", server)
    page.all("#panel-keywords .sample")[1].click()
    page.one("#kw-vocab").clear()
    page.answer("keywords", lambda: page.one("#panel-keywords .run").click())
    page.shot("keywords")


@pytest.mark.defaults
def test_describe_tab_shows_the_json_routes_answer_and_its_json_errors(page, server):
    import json

    page.open("describe")
    page.wait.until(lambda d: page.all("#panel-describe .sample"))
    for i in range(len(page.all("#panel-describe .sample"))):
        page.all("#panel-describe .sample")[i].click()
        payload = json.loads(page.one("#ds-input").get_attribute("value"))
        assert page.answer("describe", lambda: page.one("#panel-describe .run").click()) == "done"
        status, body = post(server, "describe", payload)
        assert status == 200 and page.text("#out-describe .sentence") == body["text"]
        assert len(page.all("#out-describe .check.ok")) == sum(body["checks"].values())
    check_meta(page, "describe", server)
    editor = page.one("#ds-input")
    editor.clear()
    editor.send_keys('{"detections": [oops')
    assert page.answer("describe", lambda: page.one("#panel-describe .run").click()) == "error"
    r = httpx.post(f"{server}/v1/describe", content=b'{"detections": [oops', headers={**AUTH, "content-type": "application/json"})
    assert page.text("#out-describe .error-title") == f"{r.status_code} {r.json()['type']}" == "400 InputError"
    assert page.text("#out-describe .error-message") == r.json()["error"]
    page.all("#panel-describe .sample")[0].click()
    page.answer("describe", lambda: page.one("#panel-describe .run").click())
    page.shot("describe")


def sample_b64(server, task, i):
    r = httpx.get(f"{server}/ui/samples/{task}/{i}", headers=AUTH)
    assert r.status_code == 200
    return base64.b64encode(r.content).decode()


@pytest.mark.defaults
def test_caption_tab_shows_the_json_routes_answer_and_a_bad_uploads_reason(page, server, tmp_path):
    page.open("caption")
    page.wait.until(lambda d: page.all("#panel-caption .sample"))
    for i in reversed(range(len(page.all("#panel-caption .sample")))):   # ends on the first sample (the screenshot)
        assert page.answer("caption", lambda: page.all("#panel-caption .sample")[i].click()) == "done"
        status, body = post(server, "caption", {"image": sample_b64(server, "caption", i)})
        assert status == 200 and page.text("#out-caption .caption") == body["caption"]
        assert page.texts("#out-caption .bar-label") == [t for t, _ in body["tags"]]
        assert page.texts("#out-caption .bar-value") == [f"{s:.3f}" for _, s in body["tags"]]
        assert page.texts("#out-caption .sample-captions li") == body["samples"]
    check_meta(page, "caption", server)
    page.shot("caption")
    bad = tmp_path / "not-a-photo.jpg"
    bad.write_bytes(b"hello, I am text and not a photo")
    assert page.answer("caption", lambda: page.one("#cap-file").send_keys(str(bad))) == "error"
    status, body = post(server, "caption", {"image": base64.b64encode(bad.read_bytes()).decode()})
    assert page.text("#out-caption .error-title") == f"{status} {body['type']}" == "400 ImageError"
    assert page.text("#out-caption .error-message") == body["error"]


@pytest.mark.defaults
def test_products_tab_shows_matches_with_catalogue_photos_and_the_unknown_reason(page, server, tmp_path):
    from skimage import data

    page.open("products")
    page.wait.until(lambda d: page.all("#panel-products .sample"))
    photo = tmp_path / "coffee.jpg"                   # not a product: answered as unknown, with the reason
    Image.fromarray(data.coffee()).save(photo, quality=90)
    assert page.answer("products", lambda: page.one("#pr-file").send_keys(str(photo))) == "done"
    status, body = post(server, "products", {"image": base64.b64encode(photo.read_bytes()).decode()})
    assert status == 200 and body["unknown"]
    assert page.text("#out-products .verdict-title") == "Not in the catalogue"
    assert page.text("#out-products .reason") == body["unknown_reason"]

    assert page.answer("products", lambda: page.all("#panel-products .sample")[0].click()) == "done"
    status, body = post(server, "products", {"image": sample_b64(server, "products", 0)})
    assert status == 200 and not body["unknown"]
    assert page.text("#out-products .verdict-title") == body["title"]
    assert page.text("#out-products .verdict .price") == f"{body['price']:.2f}"
    assert page.text("#out-products .estimate-value") == f"{body['price_estimate']['value']:.2f}"
    assert page.texts("#out-products .match-title") == [m["title"] for m in body["matches"]]
    assert page.texts("#out-products .match-score") == [f"{m['similarity']:.3f}" for m in body["matches"]]
    # every match shows its catalogue photo (fetched with the key, by title; no local path reaches the page)
    page.wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
                                  for img in page.all("#out-products img.thumb")))
    assert len(page.all("#out-products img.thumb")) == len(body["matches"])
    from edgesight.defaults import default_bundle_dir
    assert str(default_bundle_dir("products")) not in page.d.page_source
    check_meta(page, "products", server)
    page.shot("products")
