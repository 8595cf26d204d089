"""Issue 12's findings, one test each (every one failed on the code before the fix): hostile input gets a
typed error (InputError / BundleError) with the field and the reason, never a hang, a crash or another
exception; limits are checked before the expensive step; bundles cannot point outside themselves."""
import io
import json
import os
import struct
import subprocess
import sys
import types
import zlib

import numpy as np
import pytest
from PIL import Image

from edgesight import limits
from edgesight.bundle import Bundle, BundleWriter
from edgesight.catalog import parse_price, read_catalog_csv
from edgesight.errors import BundleError, CatalogError, ImageError, InputError
from edgesight.images import load_image
from edgesight.runtime import check_text
from edgesight.tasks import descriptions, keywords, products
from edgesight.tasks.base import Call


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose header (SOF0) claims width x height: the pixel guard must read the header."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_claiming(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)   # IHDR, with its CRC fixed up: a well-formed header
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# --- 1. the freezing label -----------------------------------------------------------------------

@pytest.mark.timeout(20)
@pytest.mark.parametrize("label", ["бутылка", "瓶子", "é", "★", "© ®"])
def test_labels_without_ascii_letters_never_hang_the_guard(label):
    vocab = descriptions.Vocabulary.from_dict(None)
    facts = descriptions.parse_input({"detections": [{"label": label, "confidence": 0.9}]})
    assert not descriptions.check_sentence("There is 1 plastic bottle on the grass.", facts, vocab).passed
    sentence = descriptions.template_sentence(facts, vocab)   # the fallback: letters of any script are read back
    assert descriptions.check_sentence(sentence, facts, vocab).passed == any(c.isalpha() for c in label)


def test_non_ascii_labels_are_read_back_by_the_guard():
    facts = descriptions.parse_input({"detections": [{"label": "бутылка", "confidence": 0.9}] * 2})
    vocab = descriptions.Vocabulary.from_dict(None)
    assert descriptions.check_sentence("There are 2 бутылкаs.", facts, vocab).checks["labels"]


# --- 2. typed errors for client mistakes ---------------------------------------------------------

HOSTILE_DESCRIBE = {
    "400-digit confidence": ({"detections": [{"label": "x", "confidence": 10 ** 400}]}, "too large"),
    "400-digit confidence in JSON": ('{"detections": [{"label": "x", "confidence": 1' + "0" * 400 + "}]}", "digits"),
    "5000-digit integer in JSON": ('{"detections": [], "n": ' + "9" * 5000 + "}", "digits"),
    "nested 10k deep": ("[" * 10_000 + "]" * 10_000, "nested"),
    "nested 40 deep": ('{"detections": []' + ', "x": ' + "[" * 40 + "]" * 40 + "}", "nested"),
    "NaN constant": ('{"detections": [{"label": "x", "confidence": NaN}]}', "NaN"),
    "invalid UTF-8": (b'{"detections": [{"label": "\xff\xfe", "confidence": 0.9}]}', "UTF-8"),
    "huge bbox number": ({"detections": [{"label": "x", "confidence": 0.9, "bbox": [0, 0, 10 ** 400, 1]}]}, "bbox"),
    "20k detections": ({"detections": [{"label": "x", "confidence": 0.9}] * 20_000}, "limit"),
}


@pytest.mark.parametrize("case", list(HOSTILE_DESCRIBE))
def test_hostile_describe_input_is_an_input_error(case):
    payload, says = HOSTILE_DESCRIBE[case]
    with pytest.raises(InputError, match=says):
        descriptions.parse_input(payload)


@pytest.mark.parametrize("prompt, says", [(7, "string"), (None, "string"), ("bad \ud800 surrogate", "Unicode"),
                                          ("x" * 10_000_000, "characters")])
def test_prompts_are_checked_before_tokenizing(prompt, says):
    with pytest.raises(InputError, match=says):
        check_text(prompt)
    with pytest.raises(InputError, match=says):
        keywords.from_json({"prompts": [prompt]} if prompt is not None else {"prompt": 7})


def test_zero_width_characters_do_not_split_words():
    assert check_text("C\u200bats and d\u00adogs\ufeff") == "Cats and dogs"
    assert keywords._check_prompts(["C\u200bats"]) == ["Cats"]


@pytest.mark.parametrize("body", [b"\xff\xfe{}", b'{"a": 1e999999}', ("[" * 5000).encode()])
def test_parse_json_never_raises_anything_but_input_error(body):
    with pytest.raises(InputError):
        limits.parse_json(body)


def test_batch_length_is_capped():
    limits.check_batch(["x"] * limits.limit("batch"))
    with pytest.raises(InputError, match="limit"):
        limits.check_batch(["x"] * (limits.limit("batch") + 1))


def test_limits_can_be_set_from_the_environment(monkeypatch):
    monkeypatch.setenv("EDGESIGHT_MAX_PROMPT_CHARS", "10")
    with pytest.raises(InputError, match="limit of 10"):
        check_text("x" * 11)
    monkeypatch.setenv("EDGESIGHT_MAX_PROMPT_CHARS", "-3")   # nonsense: the default applies
    assert check_text("x" * 11)


# --- 3. one image policy for every task: pixels checked before any decode ------------------------

@pytest.mark.parametrize("make", [jpeg_claiming, png_claiming])
def test_products_refuse_oversized_images_from_the_header(make):
    data = make(12_000, 12_000)   # 144 MP claimed
    with pytest.raises(ImageError, match="MP"):
        products._open_photo(data, 224)
    with pytest.raises(ImageError, match="MP"):
        load_image(data)


def test_decompression_bomb_header_is_an_image_error():
    with pytest.raises(ImageError):
        products._open_photo(png_claiming(200_000, 200_000), 224)


def test_reduced_scale_jpeg_decode_still_works():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), np.uint8)).save(buf, "JPEG")
    img = products._open_photo(buf.getvalue(), 224)
    assert img.mode == "RGB" and min(img.size) >= 224 and img.size[0] < 1600


# --- 4. the CLI's inputs -------------------------------------------------------------------------

def test_cli_inline_describe_json_longer_than_a_file_name(tmp_path):
    payload = {"detections": [{"label": f"label-{i}", "confidence": 0.9, "bbox": [1.5, 2.5, 30.25, 40.75]}
                              for i in range(5)], "scene": {"class": "grass", "confidence": 0.93}}
    text = json.dumps(payload)
    assert len(text) > 255
    assert descriptions.read_inputs(text) == [payload]


def test_cli_bad_jsonl_line_and_bad_utf8_are_input_errors(tmp_path):
    good = json.dumps({"detections": []})
    (tmp_path / "bad.jsonl").write_text(good + "\n{oops\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 2"):
        descriptions.read_inputs(str(tmp_path / "bad.jsonl"))
    (tmp_path / "latin.json").write_bytes(b'{"detections": [{"label": "caf\xe9", "confidence": 0.9}]}')
    with pytest.raises(InputError, match="UTF-8"):
        descriptions.read_inputs(str(tmp_path / "latin.json"))
    with pytest.raises(InputError, match="neither a readable file"):
        descriptions.read_inputs("x" * 300)


@pytest.mark.parametrize("threads", ["0", "100000", "two"])
def test_cli_threads_out_of_range_exit_2(threads, capsys):
    from edgesight.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["keywords", "--threads", threads, "a prompt"])
    assert exc.value.code == 2 and "--threads" in capsys.readouterr().err


# --- 5. wrong but silent ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", [2, float("nan"), -0.1, "0.5", 10 ** 400])
def test_per_call_thresholds_are_checked(value):
    describer = types.SimpleNamespace(min_confidence=0.5, scene_threshold=0.8)
    with pytest.raises(InputError):
        descriptions.Describer.facts(describer, {"detections": []}, min_confidence=value)
    with pytest.raises(InputError):
        descriptions.Describer.facts(describer, {"detections": []}, scene_threshold=value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2.0])
def test_products_threshold_is_checked(value):
    args = types.SimpleNamespace(threshold=value, catalog=None, save_index=None, images=[])
    with pytest.raises(InputError, match="threshold"):
        products.run_cli(types.SimpleNamespace(), args)


def test_http_keywords_honours_vocabulary():
    call = keywords.from_json({"prompt": "find the automobiles", "vocabulary": ["Car", "Person"]})
    assert isinstance(call, Call) and call.inputs == "find the automobiles"
    assert call.options == {"vocabulary": ["Car", "Person"]}
    assert keywords.from_json({"prompt": "x"}) == "x"


@pytest.mark.parametrize("text, value", [("1.299,00", 1299.0), ("12,5", 12.5), ("$1,299.00", 1299.0), ("1 299,00 €", 1299.0),
                                         ("12.50 EUR", 12.5), ("0.99", 0.99), ("1299", 1299.0), (12.5, 12.5)])
def test_prices_read_in_both_conventions(text, value):
    assert parse_price(text) == value


@pytest.mark.parametrize("text", ["1e5", "1,2,3", "1.2.3", "-4", "nan", "inf", "12..5", "1,299,00.00", True, 10 ** 400])
def test_ambiguous_or_bad_prices_are_refused(text):
    with pytest.raises(ValueError):
        parse_price(text)


# --- 6. the catalogue CSV --------------------------------------------------------------------------

def _photo(path):
    Image.new("RGB", (32, 32), (10, 120, 200)).save(path)
    return path.name


def test_latin1_catalogue_is_read_and_noted(tmp_path):
    name = _photo(tmp_path / "a.png")
    (tmp_path / "c.csv").write_bytes(f"title,category,full_price,local_image_path\nCaf\xe9 cr\xe8me,food,\"1.299,00\",{name}\n"
                                     .encode("latin-1"))
    items, report = read_catalog_csv(tmp_path / "c.csv")
    assert items[0].title == "Café crème" and items[0].price == 1299.0
    assert "not UTF-8" in report.issues[0].problem


def test_catalogue_cell_over_the_limit_is_a_catalog_error(tmp_path):
    name = _photo(tmp_path / "a.png")
    (tmp_path / "c.csv").write_text(f"title,full_price,local_image_path\nok,1,{name}\n{'x' * 200_000},1,{name}\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="line 3"):
        read_catalog_csv(tmp_path / "c.csv")


def test_catalogue_bad_prices_are_row_issues(tmp_path):
    name = _photo(tmp_path / "a.png")
    (tmp_path / "c.csv").write_text(f"title,full_price,local_image_path\nA,1e5,{name}\nB,\"12,5\",{name}\nC,x\x00y,{name}\n",
                                    encoding="utf-8")
    items, report = read_catalog_csv(tmp_path / "c.csv")
    assert [p.title for p in items] == ["B"] and items[0].price == 12.5
    assert {i.row for i in report.issues} == {2, 4}


# --- 8. bundles ---------------------------------------------------------------------------------

def _bundle(tmp_path, **fields):
    with BundleWriter(tmp_path / "b", task="keywords", format="onnx", precision="fp32", kind="token-classifier") as w:
        (w.dir / "vocab.txt").write_text("a\nb\n")
        w.set_role("vocab", "vocab.txt")
        (w.dir / "sub").mkdir()
        (w.dir / "sub" / "x.json").write_text("{}")
        w.set_role("dir", "sub")
        w.manifest.update(fields)
    return tmp_path / "b"


def _edit_manifest(path, **changes):
    m = json.loads((path / "edgesight.json").read_text())
    m.update(changes)
    (path / "edgesight.json").write_text(json.dumps(m))


@pytest.mark.parametrize("changes, says", [
    ({"format": "tensorflow"}, "unknown bundle format"),
    ({"schema": "1"}, "'schema' must be int"),
    ({"files": []}, "'files' must be dict"),
    ({"components": {"model": 3}}, "components"),
    ({"files": {"vocab.txt": {"sha256": "zz", "bytes": 4}}}, "sha256"),
    ({"files": {"vocab.txt": "abc"}}, "sha256"),
    ({"generation": "greedy"}, "'generation' must be dict"),
    ({"labels": [1, 2]}, "labels"),
    ({"task": None}, "'task' must be str"),
])
def test_manifest_fields_are_typed(tmp_path, changes, says):
    path = _bundle(tmp_path)
    Bundle.load(path)
    _edit_manifest(path, **changes)
    with pytest.raises(BundleError, match=says):
        Bundle.load(path)


def test_manifest_that_is_not_an_object_or_not_json(tmp_path):
    path = _bundle(tmp_path)
    (path / "edgesight.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="object"):
        Bundle.load(path)
    (path / "edgesight.json").write_bytes(b"\xff\xfe")
    with pytest.raises(BundleError):
        Bundle.load(path)


def test_listed_file_replaced_by_a_symlink_to_outside_is_refused(tmp_path):
    path = _bundle(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("a\nb\n")   # same bytes: the hash alone would pass
    (path / "vocab.txt").unlink()
    (path / "vocab.txt").symlink_to(outside)
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle.load(path)


def test_directory_component_pointing_outside_is_refused(tmp_path):
    path = _bundle(tmp_path)
    m = json.loads((path / "edgesight.json").read_text())
    m["components"]["dir"] = "etc"
    (path / "edgesight.json").write_text(json.dumps(m))
    (path / "etc").symlink_to("/etc")
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle.load(path)


def test_directory_component_with_unlisted_files_is_refused(tmp_path):
    path = _bundle(tmp_path)
    (path / "sub" / "planted.json").write_text("{}")
    with pytest.raises(BundleError, match="does not list"):
        Bundle.load(path)


def test_corrupt_gguf_with_fixed_up_hash_is_a_bundle_error(tmp_path):
    pytest.importorskip("llama_cpp")
    from edgesight import runtime

    with BundleWriter(tmp_path / "g", task="describe", format="gguf", precision="q8_0", kind="causal-lm") as w:
        (w.dir / "model.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(4096))
        w.set_role("model", "model.gguf")
    bundle = Bundle.load(tmp_path / "g")   # the hash matches: the file itself is broken
    with pytest.raises(BundleError, match="GGUF"):
        runtime.open_text_model(bundle, threads=1)


def test_truncated_tokenizer_json_is_a_bundle_error(tmp_path):
    from edgesight.tokenizer import TextTokenizer

    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": {"a"')
    with pytest.raises(BundleError):
        TextTokenizer.from_file(tmp_path / "tokenizer.json")


def test_labels_of_the_wrong_length_are_refused_at_load(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from edgesight.encoder import ImageEncoder
    from edgesight.images import Preprocessing

    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["n", 3, 8, 8])
    nodes = [helper.make_node("Flatten", ["pixel_values"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w_emb"], ["embedding"]),
             helper.make_node("MatMul", ["flat", "w_cls"], ["logits"])]
    inits = [numpy_helper.from_array(np.ones((192, 4), np.float32), "w_emb"),
             numpy_helper.from_array(np.ones((192, 3), np.float32), "w_cls")]
    outs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])]
    model = helper.make_model(helper.make_graph(nodes, "enc", [x], outs, inits), opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=9)
    onnx.save(model, tmp_path / "enc.onnx")
    pre = Preprocessing(size=8)
    assert ImageEncoder.from_file(tmp_path / "enc.onnx", pre, labels=["a", "b", "c"]).num_classes == 3
    with pytest.raises(BundleError, match="labels"):
        ImageEncoder.from_file(tmp_path / "enc.onnx", pre, labels=["a", "b"])


# --- with the embedded default bundles (built in CI by `edgesight build-defaults`) -------------------

def _default(task):
    from edgesight.defaults import default_bundle_dir
    if not (default_bundle_dir(task) / "edgesight.json").is_file():
        pytest.skip(f"the default {task} bundle is not built (edgesight build-defaults)")


@pytest.mark.defaults
def test_one_truncated_catalogue_image_is_a_skipped_row(tmp_path):
    _default("products")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), np.uint8)).save(buf, "JPEG")
        data = buf.getvalue()
        (tmp_path / f"p{i}.jpg").write_bytes(data[: len(data) // 3] if i == 1 else data)   # p1: header fine, body cut
        rows.append(f"Product {i},food,{i + 1}.50,p{i}.jpg")
    (tmp_path / "c.csv").write_text("title,category,full_price,local_image_path\n" + "\n".join(rows) + "\n", encoding="utf-8")
    pr = products.ProductRecognizer.from_pretrained(None, threads=1)
    report = pr.set_catalog(str(tmp_path / "c.csv"))
    assert len(pr.catalog) == 2 and report.added == 2
    assert [(i.row, i.title) for i in report.issues] == [(3, "Product 1")] and "decoded" in report.issues[0].problem


@pytest.mark.defaults
def test_http_keywords_vocabulary_matches_the_api():
    _default("keywords")
    from fastapi.testclient import TestClient

    from edgesight.serve import ServeConfig, create_app
    kw = keywords.KeywordExtractor.from_pretrained(None, threads=1)
    prompt = "find the automobiles, the dogs and the monitor"
    expected = kw(prompt, vocabulary=["Car", "Person"])
    assert expected != kw(prompt)
    with TestClient(create_app(ServeConfig(threads=1), {"keywords": kw}, {})) as client:
        r = client.post("/v1/keywords", json={"prompt": prompt, "vocabulary": ["Car", "Person"]})
    assert r.status_code == 200 and r.json() == expected


LARGE_BLOCKS = """
import sys, psutil
from edgesight.serve import _return_large_buffers_to_os
print(_return_large_buffers_to_os())
p = psutil.Process(); base = p.memory_info().rss
for _ in range(3):                      # like a burst of concurrent 10 MB request bodies
    blocks = [bytearray(10 << 20) for _ in range(4)]
    for b in blocks:
        b[::4096] = b"x" * len(b[::4096])
    del blocks
print((p.memory_info().rss - base) >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_the_server_hands_freed_request_bodies_back_to_the_os():
    # glibc's dynamic mmap threshold kept ~50 MB of freed 10 MB blocks resident (the soak's RSS growth)
    out = subprocess.run([sys.executable, "-c", LARGE_BLOCKS], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}).stdout.split()
    assert out[0] == "True"
    assert int(out[1]) < 25, f"{out[1]} MB of freed 10 MB blocks still resident"
