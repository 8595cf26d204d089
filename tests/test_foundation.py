"""The foundation: lean import, bundle integrity, atomic writes, backend checks, CLI basics."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import edgesight
from edgesight.runtime import runtime_for
from edgesight.bundle import MANIFEST, Bundle, BundleWriter
from edgesight.errors import BackendError, BundleError, BundleNotFoundError, IntegrityError, MissingExtraError

BIN = Path(sys.executable).parent


def run_py(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def make_bundle(path: Path, task="keywords", fmt="onnx") -> Bundle:
    with BundleWriter(path, task=task, format=fmt, precision="fp32", kind="test") as w:
        (w.dir / "weights.safetensors").write_bytes(b"\x00" * 64 + b"weights")
        w.set_role("model", "weights.safetensors")
        w.add_json({"labels": ["a", "b"]}, "labels.json", role="labels")
    return Bundle.load(path)


def test_import_does_not_pull_torch():
    code = ("import sys, edgesight\n"
            "[getattr(edgesight, s.cls) for s in edgesight.TASKS.values()]\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'optimum') if m in sys.modules]\n"
            "assert not heavy, heavy\nprint('clean')")
    proc = run_py(code)
    assert proc.returncode == 0 and "clean" in proc.stdout, proc.stderr


def test_bundle_roundtrip(tmp_path):
    b = make_bundle(tmp_path / "b")
    assert b.task == "keywords" and b.format == "onnx"
    assert b.file("model").read_bytes().endswith(b"weights")
    assert json.loads(b.file("labels").read_text())["labels"] == ["a", "b"]
    assert set(b.manifest["files"]) == {"weights.safetensors", "labels.json"}


def test_flipped_byte_is_refused_naming_the_file(tmp_path):
    b = make_bundle(tmp_path / "b")
    target = b.file("model")
    data = bytearray(target.read_bytes())
    data[10] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as info:
        Bundle.load(tmp_path / "b")
    assert "weights.safetensors" in str(info.value) and "sha256" in str(info.value)


def test_truncated_and_missing_files_are_refused(tmp_path):
    b = make_bundle(tmp_path / "b")
    b.file("labels").write_text("{}")
    with pytest.raises(IntegrityError, match="labels.json"):
        Bundle.load(b.path)
    b.file("labels").unlink()
    with pytest.raises(BundleError, match="labels.json.*missing"):
        Bundle.load(b.path)


def test_pickle_weights_are_never_loaded(tmp_path):
    b = make_bundle(tmp_path / "b")
    evil = tmp_path / "b" / "model.pt"
    evil.write_bytes(b"not even read")
    manifest = json.loads((b.path / MANIFEST).read_text())
    manifest["files"]["model.pt"] = {"sha256": "0" * 64, "bytes": evil.stat().st_size}
    (b.path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="not allowed"):
        Bundle.load(b.path)


def test_manifest_path_escape_is_refused(tmp_path):
    b = make_bundle(tmp_path / "b")
    manifest = json.loads((b.path / MANIFEST).read_text())
    manifest["files"]["../outside.json"] = {"sha256": "0" * 64, "bytes": 1}
    (b.path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle.load(b.path)


def test_failed_write_leaves_nothing_and_keeps_the_old_bundle(tmp_path):
    out = tmp_path / "b"
    make_bundle(out)
    before = (out / MANIFEST).read_text()
    with pytest.raises(RuntimeError):
        with BundleWriter(out, task="keywords", format="onnx", precision="fp32", kind="test") as w:
            (w.dir / "half.onnx").write_bytes(b"partial")
            raise RuntimeError("disk full")
    assert (out / MANIFEST).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_not_a_bundle_and_corrupt_manifest(tmp_path):
    with pytest.raises(BundleNotFoundError, match="not an edgesight bundle"):
        Bundle.load(tmp_path)
    make_bundle(tmp_path / "exported" / "onnx-int8")   # what `edgesight export --out exported` leaves
    with pytest.raises(BundleNotFoundError, match=r"a folder of them; pass one: .*exported/onnx-int8"):
        Bundle.load(tmp_path / "exported")
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(tmp_path)


def test_backend_mismatch_is_a_clear_error(tmp_path):
    b = make_bundle(tmp_path / "b", fmt="onnx")
    assert runtime_for(b, None).name == "onnx"
    with pytest.raises(BackendError, match="cannot run on the 'gguf' backend"):
        runtime_for(b, "gguf")
    with pytest.raises(BackendError, match="unknown backend"):
        runtime_for(b, "tensorrt")


def test_wrong_task_bundle_is_refused(tmp_path):
    make_bundle(tmp_path / "b", task="caption")
    with pytest.raises(BundleError, match="for task 'caption', not 'keywords'"):
        edgesight.KeywordExtractor.from_pretrained(tmp_path / "b")


def test_missing_default_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESIGHT_HOME", str(tmp_path))
    with pytest.raises(BundleNotFoundError, match="edgesight build-defaults"):
        edgesight.KeywordExtractor.from_pretrained()


def test_missing_extra_gives_the_exact_pip_hint():
    # Hide llama_cpp as if the [gguf] extra were not installed, then ask for it the SDK's way.
    code = ("import sys; sys.modules['llama_cpp'] = None\n"
            "from edgesight._optional import require\n"
            "from edgesight.errors import MissingExtraError\n"
            "try:\n    require('llama_cpp', 'gguf')\n"
            "except MissingExtraError as e:\n    print(e)\n")
    proc = run_py(code)
    assert "pip install 'edgesight[gguf]'" in proc.stdout, proc.stderr
    assert issubclass(MissingExtraError, ImportError)


def test_cli_help_lists_every_task_and_tool():
    proc = subprocess.run([str(BIN / "edgesight"), "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in list(edgesight.TASKS) + ["train", "export", "eval", "bench", "serve", "build-defaults", "demo"]:
        assert name in proc.stdout


def test_cli_bad_input_exits_nonzero_with_one_line(tmp_path):
    proc = subprocess.run([str(BIN / "edgesight"), "keywords", "--model", str(tmp_path), "cats"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not an edgesight bundle" in proc.stderr
