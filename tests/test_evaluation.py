"""edgesight.evaluation: the typed keywords eval on a real bundle (the tiny tagger trained in this
session, and the default bundle when built), and `edgesight eval keywords` writing its report."""
import json

import pytest

from edgesight.evaluation.keywords import HANDWRITTEN, run_eval


@pytest.fixture(params=["tiny", pytest.param("default", marks=pytest.mark.defaults)])
def bundle(request):
    if request.param == "tiny":
        return str(request.getfixturevalue("tagger_bundle"))
    from edgesight.defaults import default_bundle_dir
    if not (default_bundle_dir("keywords") / "edgesight.json").is_file():
        pytest.skip("default bundles not built (run `edgesight build-defaults`)")
    return None


def test_default_sets_report_scores(bundle):
    report = run_eval(bundle, threads=1, limit=5)
    assert report["model"]["task"] == "keywords"
    assert HANDWRITTEN.name in report["sets"] and any(k.startswith("validation") for k in report["sets"])
    for entry in report["sets"].values():
        assert entry["model"]["n"] == 5 and 0 <= entry["model"]["f1"] <= 1
        assert 0 <= entry["baseline"]["f1"] <= 1


def test_a_wrong_gold_row_lowers_exact(bundle, tmp_path):
    from edgesight import KeywordExtractor
    prompt = "Segment cats, dogs, but not humans"
    pred = KeywordExtractor.from_pretrained(bundle, threads=1)(prompt)
    rows = [{"input": prompt, "output": pred}, {"input": prompt, "output": pred + ["Zebra"]}]
    (tmp_path / "gold.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    entry = run_eval(bundle, threads=1, data=[tmp_path / "gold.jsonl"], with_baseline=False)["sets"]["gold.jsonl"]
    assert entry["model"]["exact"] == 0.5 and entry["model"]["recall"] < 1
    assert [e["gold"] for e in entry["errors"]] == [rows[1]["output"]] and "baseline" not in entry


def test_cli_writes_the_report(bundle, tmp_path, capsys):
    from edgesight.cli import main
    out = tmp_path / "out.json"
    argv = ["eval", "keywords", "--limit", "3", "--no-baseline", "--threads", "1", "--json", str(out)]
    assert main(argv + (["--model", bundle] if bundle else [])) == 0
    report = json.loads(out.read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert all(e["model"]["n"] == 3 and "baseline" not in e for e in report["sets"].values())
    with pytest.raises(SystemExit):  # argparse: exit 2 with the reason
        main(["eval", "keywords", "--threads", "0"])
