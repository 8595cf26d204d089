"""The layout's rules, checked on the source: imports run one way, the run time reads nothing from
tests/, the CLI never executes code from the current directory, every runtime serves the devices it
says, and client mistakes are typed errors (HTTP 400), whatever the input's type."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgesight.bundle import Bundle
from edgesight.errors import DeviceError, InputError
from edgesight.runtime import RUNTIMES, open_text_model, resolve_device

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package it installs as (setup.py package_dir) and its layer (higher may import lower)
LAYERS = {"sdk": ("edgesight", 0), "export": ("edgesight.export", 1), "training": ("edgesight.training", 2),
          "evaluation": ("edgesight.evaluation", 3)}


def _layer_of(module: str) -> int | None:
    """The layer of an edgesight module name, or None for anything outside edgesight."""
    if module != "edgesight" and not module.startswith("edgesight."):
        return None
    found = [layer for pkg, layer in LAYERS.values() if module == pkg or module.startswith(pkg + ".")]
    return max(found)


def _imports(path: Path, package: str):
    """(line, absolute module name) of every import statement in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            yield node.lineno, name
            for alias in node.names:   # `from . import runtime` names a module too
                yield node.lineno, f"{name}.{alias.name}"


def _sources():
    for folder, (pkg, layer) in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            module = ".".join([pkg, *parts])
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            yield path, package, layer


def test_imports_run_one_way():
    """run time <- export <- training; evaluation may use all three; nothing imports tests or benchmarks."""
    bad = []
    for path, package, layer in _sources():
        for line, name in _imports(path, package):
            target = _layer_of(name)
            if (target is not None and target > layer) or name.split(".")[0] in ("tests", "benchmarks", "kit"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, "imports against the layer direction:\n" + "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path):
    """The direction check itself can fail: a run-time file importing training is reported."""
    f = tmp_path / "x.py"
    f.write_text("from ..training import trainer\nimport edgesight.evaluation.keywords\n")
    names = [n for _, n in _imports(f, "edgesight.tasks")]
    assert [_layer_of(n) for n in names] == [2, 2, 3]


def test_run_time_reads_nothing_from_tests():
    hits = [f"{p.relative_to(ROOT)}" for p in (ROOT / "sdk").rglob("*.py")
            if '"tests"' in p.read_text(encoding="utf-8") or "tests/data" in p.read_text(encoding="utf-8")]
    assert not hits


def _cli(args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EDGESIGHT_HOME": str(cwd / "home")}
    return subprocess.run([sys.executable, "-m", "edgesight.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_never_runs_code_from_the_current_directory(tmp_path):
    """A benchmarks/cli.py (and a look-alike edgesight/ or tests/) in the current directory is never executed,
    whichever command runs, even under `python -m` (which puts the current directory first on sys.path)."""
    marker = tmp_path / "EXECUTED"
    payload = f"open({str(marker)!r}, 'w').write('x')\n"
    for pkg in ("benchmarks", "kit", "evaluation"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(payload)
        (tmp_path / pkg / "cli.py").write_text(payload)
    for args in (["--help"], ["keywords", "--help"], ["bench", "--help"], ["eval", "--help"], ["export", "--help"],
                 ["serve", "--help"], ["demo", "--help"]):
        r = _cli(args, tmp_path)
        assert r.returncode == 0, (args, r.stderr[-2000:])
        assert not marker.exists(), f"`edgesight {' '.join(args)}` executed code from the current directory"


def test_cli_threads_are_checked(tmp_path):
    for bad in ("0", "-1", "100000", "two"):
        r = _cli(["keywords", "--threads", bad, "cats"], tmp_path)
        assert r.returncode == 2 and "--threads" in r.stderr and "Traceback" not in r.stderr


def test_keywords_help_imports_no_export_or_training_code():
    code = ("import sys, contextlib, io\nfrom edgesight import cli\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    cli.main(['keywords', '--help'])\n"
            "print(sorted(m for m in sys.modules if m.startswith(('edgesight.export', 'edgesight.training', "
            "'edgesight.evaluation', 'torch', 'benchmarks'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- devices

def test_cuda_without_cuda_is_a_typed_error_naming_the_install(tiny_llama_onnx):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: covered by benchmarks/gpu_check.sh")
    bundle = Bundle.load(tiny_llama_onnx)
    with pytest.raises(DeviceError, match=r"edgesight\[gpu\]"):
        open_text_model(bundle, threads=1, device="cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        open_text_model(bundle, threads=1, device="tpu")


def test_auto_falls_back_to_cpu_and_says_so(tagger_bundle):
    import onnxruntime as ort

    from edgesight import KeywordExtractor

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    kw = KeywordExtractor.from_pretrained(tagger_bundle, threads=1, device="auto")
    info = kw.info()
    assert info["device"] == "cpu" and "fell back to cpu" in info["device_note"]
    assert kw.session.__self__ is kw and kw._model.session.providers == ["CPUExecutionProvider"]
    assert KeywordExtractor.from_pretrained(tagger_bundle, threads=1).info()["device"] == "cpu"


def test_every_runtime_lists_its_devices():
    """The table's devices come from each runtime itself: cpu always, cuda only where usable."""
    for spec in RUNTIMES.values():
        try:
            devices = spec.load().devices()
        except ImportError:
            continue
        assert devices[0] == "cpu" and set(devices) <= {"cpu", "cuda"}
        assert resolve_device(spec, "auto")[0] == ("cuda" if "cuda" in devices else "cpu")


# ----------------------------------------------------------------------------- typed input errors

@pytest.mark.parametrize("prompt", [5, None, ["ok", 3], {"a": 1}, "lone \ud800 surrogate"])
def test_non_string_prompts_are_input_errors(tagger_bundle, prompt):
    from edgesight import KeywordExtractor

    with pytest.raises(InputError):
        KeywordExtractor.from_pretrained(tagger_bundle, threads=1)(prompt)


def test_non_string_prompt_over_http_is_400(tagger_bundle, tmp_path):
    import httpx

    from benchmarks.serve_load import start_server, stop_server

    proc, url = start_server(["--model", f"keywords={tagger_bundle}", "--threads", "1"],
                             env={"EDGESIGHT_HOME": str(tmp_path / "home")})
    try:
        for body in ({"prompt": 5}, {"prompts": ["cats", 3]}, {"prompt": None}, {"prompt": ["nested", ["x"]]}):
            r = httpx.post(url + "/v1/keywords", json=body, timeout=60)
            assert r.status_code == 400 and r.json()["error"], (body, r.status_code, r.text)
        r = httpx.post(url + "/v1/keywords", content=b'{"prompt": "cats \\ud800"}',
                       headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 400 and "Unicode" in r.json()["error"]
        assert httpx.post(url + "/v1/keywords", json={"prompt": "find the cats"}, timeout=60).status_code == 200
    finally:
        stop_server(proc)
