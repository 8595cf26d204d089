"""The benchmark suite: guard logic on hand-made results, the worker protocol on real processes,
and a real --quick run on tiny models (checked for its schema, never for its timings)."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import SCHEMA, guard
from benchmarks.runner import Case, Comparison, Group, measure, paired_ratio, summarize
from edgesight.errors import EdgesightError, InputError

REPO = Path(__file__).resolve().parent.parent


def _ratio(key, ratio, lo, hi, status="ok"):
    return {"key": key, "status": status, "ratio": ratio, "ci95": [lo, hi], "reason": "case skipped: no GGUF"}


RESULTS = {"ratios": [_ratio("sdk_over_raw", 1.02, 0.99, 1.06), _ratio("int8_over_fp32", 1.30, 1.22, 1.41),
                      _ratio("noisy", 1.08, 1.01, 1.12), _ratio("faster", 0.55, 0.5, 0.6)],
           "cases": [{"id": "t/onnx-int8/edgesight", "status": "ok", "quality": {"f1": 0.81}},
                     {"id": "t/gguf-q8_0/edgesight", "status": "skipped", "reason": "no GGUF here"}]}


def test_guard_passes_within_bounds_and_fails_on_sure_regressions():
    base = {"ratios": {"sdk_over_raw": {"max": 1.05}, "int8_over_fp32": {"max": 1.1, "why": "int8 must not be slower"},
                       "noisy": {"max": 1.05}, "faster": {"max": 0.8, "min": 0.7}},
            "quality": {"t/onnx-int8/edgesight": {"f1": {"min": 0.8}}}}
    out = guard.check(RESULTS, base)
    status = {c.key: c.status for c in out.checks}
    assert status == {"sdk_over_raw": "pass", "int8_over_fp32": "fail", "noisy": "noisy",
                      "faster": "fail", "t/onnx-int8/edgesight f1": "pass"}
    assert not out.ok
    text = out.report()
    assert text.startswith("guard: FAILED — 2 fail, 1 noisy, 2 pass")
    fail_line = next(line for line in text.splitlines() if "int8_over_fp32" in line)
    assert "FAIL" in fail_line and "1.300 (CI 1.220–1.410)" in fail_line and "<= 1.1" in fail_line
    assert out.to_dict()["ok"] is False


def test_guard_quality_floor_and_missing_measurements():
    base = {"ratios": {"gone": {"max": 1.0}, "gone_optional": {"max": 1.0, "optional": True}},
            "quality": {"t/onnx-int8/edgesight": {"f1": {"min": 0.9}}, "t/gguf-q8_0/edgesight": {"f1": {"min": 0.5}}}}
    out = guard.check(RESULTS, base)
    status = {c.key: c.status for c in out.checks}
    assert status == {"gone": "fail", "gone_optional": "missing", "t/onnx-int8/edgesight f1": "fail",
                      "t/gguf-q8_0/edgesight f1": "fail"}
    skipped = next(c for c in out.checks if c.key == "t/gguf-q8_0/edgesight f1")
    assert "no GGUF here" in skipped.measured


def test_guard_only_ratio_rules_pass():
    out = guard.check(RESULTS, {"ratios": {"sdk_over_raw": {"max": 1.05}}})
    assert out.ok and out.report().startswith("guard: ok — 1 pass")


def test_guard_rejects_bad_baselines(tmp_path):
    with pytest.raises(InputError, match="neither 'max' nor 'min'"):
        guard.check(RESULTS, {"ratios": {"sdk_over_raw": {"limit": 1}}})
    with pytest.raises(InputError, match="run `python -m benchmarks run --quick"):
        guard.guard(tmp_path / "none.json", REPO / "benchmarks" / "baseline.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        guard.guard(tmp_path / "bad.json", tmp_path / "bad.json")


@pytest.mark.parametrize("name", ["baseline.json", "baseline-full.json"])
def test_committed_baselines_are_well_formed(name):
    base = json.loads((REPO / "benchmarks" / name).read_text())
    assert base["ratios"] and all({"max", "min"} & set(rule) for rule in base["ratios"].values())
    assert all("why" in rule for rule in base["ratios"].values())


def test_committed_full_run_backs_the_readme_claims():
    """The README's <=5% SDK-overhead figures come from results/full.json; it must pass its bounds."""
    out = guard.guard(REPO / "benchmarks" / "results" / "full.json", REPO / "benchmarks" / "baseline-full.json")
    assert out.ok, out.report()
    assert {c.key for c in out.checks if c.status == "pass"} >= {
        "keywords.gguf-q8_0-base.edgesight_over_llama_cpp_python", "describe.onnx-fp32-base.edgesight_over_textmodel"}


def test_paired_ratio_and_summary():
    a = [0.2, 0.4, 0.3, 0.5, 0.1]
    r = paired_ratio(a, [x / 2 for x in a], items_a=[2] * 5, items_b=[1] * 5)  # twice as slow, whatever the drift
    assert r["ratio"] == pytest.approx(2.0) and r["ci95"] == pytest.approx([2.0, 2.0]) and r["rounds"] == 5
    assert r["ratio_per_item"] == pytest.approx(1.0)  # ... because it made twice the tokens
    s = summarize([0.01, 0.02, 0.03, 0.04, 0.10])
    assert s["median_ms"] == pytest.approx(30.0) and s["min_ms"] == pytest.approx(10.0)
    assert 40.0 < s["p95_ms"] <= 100.0 and s["n"] == 5


def test_cases_that_cannot_run_are_reported_not_dropped():
    group = Group("t", [Case("t", "onnx-fp32", "edgesight", skip="no bundle: export failed"),
                        Case("t", "gguf-q8_0", "edgesight", "benchmarks.impls:no_such_factory", {})],
                  [Comparison("t.x", "t/onnx-fp32/edgesight", "t/gguf-q8_0/edgesight", "x")])
    out = measure(group, threads=1, rounds=2, warmup=0, batch_rounds=0, timeout=120, progress_bar=False)
    by_id = {c["id"]: c for c in out["cases"]}
    assert by_id["t/onnx-fp32/edgesight"]["status"] == "skipped"
    assert by_id["t/onnx-fp32/edgesight"]["reason"] == "no bundle: export failed"
    assert by_id["t/gguf-q8_0/edgesight"]["status"] == "skipped"
    assert "no_such_factory" in by_id["t/gguf-q8_0/edgesight"]["reason"]
    assert out["ratios"][0]["status"] == "skipped" and "export failed" in out["ratios"][0]["reason"]


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "run", "--quick", "--json", str(out), "--threads", "1",
                           "--rounds", "3", "--warmup", "1", "--batch-rounds", "1", "--no-progress",
                           "--work", str(out.parent / "work")], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(out.read_text()), proc


@pytest.mark.slow
def test_quick_run_schema(quick_run):
    path, run, proc = quick_run
    assert run["schema"] == SCHEMA and run["mode"] == "quick"
    assert run["settings"]["threads"] == 1 and run["settings"]["rounds"] == 3
    assert len(run["machine"]["loadavg"]) == 3 and len(run["loadavg_end"]) == 3
    assert run["versions"]["onnxruntime"] and run["versions"]["edgesight"]
    assert run["git"]["commit"] is None or len(run["git"]["commit"]) == 40
    ids = {c["id"] for c in run["cases"]}
    for fmt in ("torch-fp32/transformers", "onnx-fp32/optimum", "onnx-fp32/edgesight", "onnx-int8/edgesight",
                "gguf-f16/edgesight", "gguf-q8_0/edgesight", "gguf-q8_0/llama-cpp-python", "gguf-q4_k_m/edgesight"):
        assert f"tiny-llm/{fmt}" in ids
    for c in run["cases"]:
        assert c["status"] in ("ok", "skipped", "error") and c["threads"] == 1
        if c["status"] == "ok":
            assert len(c["samples_ms"]) == 3 and c["min_ms"] <= c["median_ms"] <= c["p95_ms"]
            assert c["load_s"] > 0 and c["first_call_ms"] > 0 and c["peak_rss_mb"] > 0
            assert c["batch_items_per_s"] > 0
            assert c["task"] != "tiny-llm" or "agreement_vs_torch" in c["quality"]
        else:
            assert c["reason"], c
    ok = {c["id"] for c in run["cases"] if c["status"] == "ok"}
    # the peers and the reference are built from public tools and must always run
    assert {"tiny-llm/torch-fp32/transformers", "tiny-llm/onnx-fp32/optimum", "tiny-llm/gguf-q8_0/llama-cpp-python"} <= ok
    ref = next(c for c in run["cases"] if c["id"] == "tiny-llm/torch-fp32/transformers")
    assert ref["quality"]["agreement_vs_torch"] == 1.0
    # the keywords task on the tiny bundles, with peers replaying its exact model calls
    for cid in ("keywords/gguf-q8_0/edgesight", "keywords/gguf-q8_0/llama-cpp-python", "keywords/gguf-q8_0/textmodel",
                "keywords/onnx-fp32/edgesight", "keywords/onnx-fp32/optimum"):
        assert cid in ok, next(c for c in run["cases"] if c["id"] == cid)
    replay = next(c for c in run["cases"] if c["id"] == "keywords/gguf-q8_0/llama-cpp-python")
    assert replay["items_per_call"] > 0  # it generated tokens for the task's recorded prompts
    sdk_kw = next(c for c in run["cases"] if c["id"] == "keywords/onnx-fp32/edgesight")
    assert sdk_kw["quality"]["export_exact_match"] == 1.0
    keys = {r["key"]: r for r in run["ratios"]}
    assert keys["keywords.gguf-q8_0.edgesight_over_llama_cpp_python"]["status"] == "ok"
    assert "tiny-llm.gguf-q8_0.edgesight_over_llama_cpp" in keys and "tiny-llm.onnx.int8_over_fp32" in keys
    assert keys["tiny-llm.optimum_over_transformers"]["status"] == "ok"
    assert keys["tiny-llm.optimum_over_transformers"]["rounds"] == 3
    assert 0 < keys["tiny-llm.size.onnx_int8_over_fp32"]["ratio"] < 0.5
    md = path.with_suffix(".md").read_text()
    assert "| tiny-llm/onnx-fp32/optimum |" in md and "1 thread(s)" in md
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_guard_cli_on_the_quick_run(quick_run, tmp_path):
    path, run, _ = quick_run
    base = {"ratios": {"tiny-llm.size.onnx_int8_over_fp32": {"max": 0.5, "why": "int8 file must be small"},
                       "tiny-llm.optimum_over_transformers": {"max": 1e-6, "why": "impossible: must fail"}}}
    (tmp_path / "base.json").write_text(json.dumps(base))
    # `edgesight bench` run from elsewhere finds the checkout it was installed from
    for cmd, cwd in ((["-m", "benchmarks", "guard"], REPO), (["-m", "edgesight.cli", "bench", "guard"], tmp_path)):
        proc = subprocess.run([sys.executable, *cmd, "--baseline", str(tmp_path / "base.json"), "--results", str(path)],
                              cwd=cwd, capture_output=True, text=True)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "FAIL" in proc.stdout and "tiny-llm.optimum_over_transformers" in proc.stdout
        assert "PASS" in proc.stdout and "tiny-llm.size.onnx_int8_over_fp32" in proc.stdout


def test_edgesight_bench_outside_a_checkout_says_what_to_do(monkeypatch):
    from edgesight import bench
    monkeypatch.setattr(bench, "_suite", lambda: None)  # as in a wheel install: no benchmarks/ anywhere
    with pytest.raises(EdgesightError, match="install edgesight from a checkout"):
        bench.main(argparse.Namespace(bench_command="run"))


def test_full_mode_has_the_real_size_random_weight_groups(tmp_path):
    # declared only: building them (T5-small, CLIP ViT-B/32 at real size) is the full run's job
    from benchmarks.cases import task_groups
    from benchmarks.impls import photo

    builders = task_groups(tmp_path, 1, quick=False)
    assert {"t5-small", "clip-b32"} <= set(builders) and "t5-small" not in task_groups(tmp_path, 1, quick=True)
    assert photo(3).size == (640, 480) and photo(3).tobytes() == photo(3).tobytes()
