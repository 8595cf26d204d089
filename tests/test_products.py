"""Product recognition end to end on real parts: the real EfficientNet-Lite0 exported to ONNX (fp32 and
static int8) once per session, a PIL-rendered catalogue, augmented query photos, real onnxruntime,
real RapidOCR, the real CLI."""
import base64
import io
import json

import numpy as np
import pytest

from catalog_kit import broken_catalog, make_catalog, photo_queries, real_photo, render
from edgesight.catalog import CatalogIndex, Product, read_catalog_csv
from edgesight.errors import CatalogError, ImageError, InputError
from edgesight.evaluation.products import evaluate
from edgesight.tasks.products import Match, ProductRecognizer, estimate_price, from_json, read_price, text_match


@pytest.fixture(scope="session")
def default_bundle(tmp_path_factory):
    """The default products bundle as `edgesight build-defaults` makes it (int8 + sample catalogue)."""
    from edgesight.training.products import build_default as build
    return build(tmp_path_factory.mktemp("bundles") / "products", threads=1, progress=False).path


@pytest.fixture(scope="session")
def fp32_bundle(tmp_path_factory):
    from edgesight.export.image_encoder import efficientnet_lite0, export_image_encoder
    return export_image_encoder(efficientnet_lite0(), tmp_path_factory.mktemp("bundles") / "enc-fp32", precision="fp32",
                                calibration=[real_photo("chelsea"), real_photo("coffee")], progress=False).path


@pytest.fixture(scope="session")
def catalog(tmp_path_factory):
    return make_catalog(tmp_path_factory.mktemp("catalog"), n=16, holdout=4)


@pytest.fixture(scope="session")
def recognizer(default_bundle, catalog):
    return ProductRecognizer.from_pretrained(default_bundle, catalog=catalog[0], threads=1)


def test_encoder_bundle_classifies_real_photos_and_records_fidelity(fp32_bundle, default_bundle):
    from edgesight.bundle import Bundle
    from edgesight.encoder import ImageEncoder

    for path in (fp32_bundle, default_bundle):
        bundle = Bundle.load(path)
        enc = ImageEncoder.from_bundle(bundle, threads=1)
        top = enc.classify([real_photo("chelsea"), real_photo("coffee")], top_k=3)
        assert top[0][0][0] in ("Egyptian cat", "tabby", "tiger cat"), top[0]
        assert top[1][0][0] == "espresso", top[1]
        assert bundle.manifest["preprocessing"]["size"] == 224 and bundle.manifest["outputs"] == {"embedding": 1280, "logits": 1000}
        fid = bundle.manifest["fidelity"]
        assert fid["embedding_cosine_min"] > (0.999 if bundle.precision == "fp32" else 0.85), fid  # dynamic int8: 0.63
    assert Bundle.load(default_bundle).manifest["int8_mode"] == "static"


def test_default_bundle_recognises_its_sample_query(default_bundle):
    from edgesight.training.data.products import catalog_products

    pr = ProductRecognizer.from_pretrained(default_bundle, threads=1)
    result = pr(str(default_bundle / "samples" / "query.jpg"))
    assert not result.unknown and result.title == catalog_products(24, seed=0)[0].title
    assert result.price == result.matches[0].price and result.category == result.matches[0].category
    json.dumps(result.to_dict())  # JSON-able all the way down


def test_augmented_photos_are_recognised(recognizer, catalog):
    _, listed, _ = catalog
    metrics = evaluate(recognizer, photo_queries(listed, views=1, seed=5))
    assert metrics["top1_title_accuracy"] >= 0.75, metrics
    assert metrics["category_accuracy"] >= metrics["top1_title_accuracy"] - 1e-9
    assert metrics["price_mae"] < 2.0, metrics


def test_out_of_catalogue_photo_is_unknown_not_a_confident_wrong_answer(recognizer):
    for name in ("chelsea", "coffee"):
        result = recognizer(real_photo(name))
        assert result.unknown and result.title is None and result.price is None, result.matches[0]
        assert "< threshold" in result.unknown_reason
        assert result.matches and result.price_estimate is not None  # neighbours are still shown


def test_large_jpeg_photo_is_decoded_reduced_and_recognised(recognizer, catalog, tmp_path):
    _, listed, _ = catalog
    big = tmp_path / "phone.jpg"
    render(listed[5]).resize((3000, 3000)).save(big, quality=90)   # 9 MP: decoded at 1/8 scale via PIL draft
    result = recognizer(str(big))
    assert result.title == listed[5].title and recognizer(big.read_bytes()).title == listed[5].title


def test_batch_gives_one_result_per_photo(recognizer, catalog):
    _, listed, _ = catalog
    photos = [render(p) for p in listed[:3]]
    results = recognizer(photos, top_k=2)
    assert [r.title for r in results] == [p.title for p in listed[:3]]
    assert all(len(r.matches) == 2 for r in results)


def test_ingestion_reports_bad_rows_and_keeps_the_good_ones(catalog, tmp_path):
    csv_path, listed, _ = catalog
    products, report = read_catalog_csv(broken_catalog(tmp_path, csv_path))
    assert [p.title for p in products] == [p.title for p in listed]
    problems = {i.title: i.problem for i in report.issues}
    assert "image not found" in problems["ZZZ Missing photo"]
    assert "bad price" in problems["ZZZ Bad price"] and "bad price" in problems["ZZZ Negative"]
    assert "duplicate title" in problems[listed[1].title] and "first at line 3" in problems[listed[1].title]
    assert "empty title" in problems[""]
    assert "not a readable image" in problems["ZZZ Corrupt photo"]
    assert report.rows == len(listed) + 6 and report.added == len(listed)
    assert products[0].extra == {"brand": listed[0].brand}  # extra columns are kept


def test_empty_or_unusable_catalogue_is_a_clear_error(recognizer, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("title,category,full_price,local_image_path\n")
    with pytest.raises(CatalogError, match="catalogue is empty"):
        read_catalog_csv(empty)
    missing = tmp_path / "missing.csv"
    missing.write_text("title,category,full_price,local_image_path\nA,b,1.0,nowhere.png\n")
    with pytest.raises(CatalogError, match="image not found on disk"):
        recognizer.set_catalog(missing)
    (tmp_path / "x.csv").write_text("name_of_thing,price\nA,1\n")
    with pytest.raises(CatalogError, match="no title column"):
        read_catalog_csv(tmp_path / "x.csv")
    with pytest.raises(CatalogError, match="not found"):
        read_catalog_csv(tmp_path / "absent.csv")
    index = CatalogIndex(np.zeros((0, 8), np.float32), [], {})
    with pytest.raises(CatalogError, match="empty"):
        index.search(np.ones(8, np.float32))


def test_unreadable_photo_is_an_image_error(recognizer, catalog, tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="not a recognised image format"):
        recognizer(str(junk))
    with pytest.raises(ImageError, match="no such image file"):
        recognizer(str(tmp_path / "absent.jpg"))
    buf = io.BytesIO()
    render(catalog[1][0]).save(buf, "JPEG")
    with pytest.raises(ImageError, match="truncated"):
        recognizer(buf.getvalue()[: len(buf.getvalue()) // 2])  # the fast JPEG path falls back to the typed error
    with pytest.raises(InputError, match="base64"):
        from_json({"image": "@@@"})


def test_add_and_reprice_without_retraining(default_bundle, catalog):
    csv_path, _, held_out = catalog
    pr = ProductRecognizer.from_pretrained(default_bundle, catalog=csv_path, threads=1)
    new = held_out[0]
    photos = [p for p, _ in photo_queries([new], views=5, seed=9)]
    photo = photos[1]
    assert pr(photo).matches[0].title != new.title
    rows = len(pr.catalog.embeddings)
    pr.add_product(new.title, new.category, f"${new.price}", render(new), brand=new.brand)
    assert len(pr.catalog.embeddings) == rows + pr.catalog.views          # one row per view of the new photo
    assert sum(pr(p).matches[0].title == new.title for p in photos) >= 4  # shop photos: 4 of 5 at least
    best = pr(photo).matches[0]
    assert best.title == new.title and best.price == new.price
    pr.set_price(new.title, "1,299.00")
    assert pr(photo).matches[0].price == 1299.0
    with pytest.raises(CatalogError, match="already exists"):
        pr.add_product(new.title, new.category, 1.0, render(new))
    with pytest.raises(CatalogError, match="bad price"):
        pr.set_price(new.title, "free")
    pr.catalog.remove(new.title)
    assert new.title not in pr.catalog and pr(photo).matches[0].title != new.title
    assert len(pr.catalog.embeddings) == rows


def test_index_saves_as_a_bundle_and_refuses_another_encoder(recognizer, fp32_bundle, default_bundle, tmp_path):
    saved = recognizer.catalog.save(tmp_path / "index")
    assert saved.kind == "catalog-index" and (tmp_path / "index" / "rows.faiss").is_file()
    assert saved.manifest["files"]["rows.faiss"]["sha256"]           # faiss bytes, hash-checked like every file
    again = ProductRecognizer.from_pretrained(default_bundle, catalog=tmp_path / "index", threads=1)
    assert [p.title for p in again.catalog.products] == [p.title for p in recognizer.catalog.products]
    np.testing.assert_array_equal(again.catalog.embeddings, recognizer.catalog.embeddings)
    with pytest.raises(CatalogError, match="rebuild it from the CSV"):
        ProductRecognizer.from_pretrained(fp32_bundle, catalog=tmp_path / "index", threads=1)


def test_search_matches_brute_force_on_a_large_random_index():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((20_000, 64)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = CatalogIndex(emb, [Product(f"p{i}", None, 1.0) for i in range(len(emb))], {})
    q = emb[[7, 19_999]] + 0.01 * rng.standard_normal((2, 64)).astype(np.float32)
    idx, sims = index.search(q / np.linalg.norm(q, axis=1, keepdims=True), k=5, exact=True)
    brute = np.argsort(-(q / np.linalg.norm(q, axis=1, keepdims=True)) @ emb.T, axis=1)[:, :5]
    np.testing.assert_array_equal(idx, brute)
    assert idx[0, 0] == 7 and idx[1, 0] == 19_999 and np.all(np.diff(sims, axis=1) <= 0)


def test_approximate_search_agrees_with_exact_and_follows_updates(tmp_path):
    from edgesight.bundle import Bundle
    from edgesight.errors import BundleError

    rng = np.random.default_rng(1)
    emb = rng.standard_normal((21_000, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    items = np.repeat(np.arange(7_000), 3)                    # three views per product
    index = CatalogIndex(emb, [Product(f"p{i}", None, 1.0) for i in range(7_000)], {}, items=items)
    rows = rng.integers(0, len(emb), 40)
    q = emb[rows] + 0.05 * rng.standard_normal((40, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = index.search(q, 3, exact=True)[0]
    approx = index.search(q, 3)[0]                             # >= ANN_MIN_ROWS rows: faiss IVF, trained on first use
    assert index.ann().nlist == 144 and (exact[:, 0] == items[rows]).all() and (approx[:, 0] == exact[:, 0]).mean() >= 0.95
    assert all(len(set(r)) == 3 for r in approx)               # k distinct products, not k rows of one product
    new = rng.standard_normal((2, 32)).astype(np.float32)
    index.add(Product("new", None, 2.0), new)
    assert index.products[index.search(new[1] / np.linalg.norm(new[1]), 1)[0][0, 0]].title == "new"
    gone = f"p{items[rows[0]]}"
    index.remove(gone)
    assert gone not in [index.products[i].title for i in index.search(q[:1], 3)[0][0]]
    assert len(index.embeddings) == len(emb) - 3 + 2 and len(index) == 7_000
    saved = index.save(tmp_path / "ann")
    loaded = CatalogIndex.load(saved.path)
    assert loaded._ann is not None and saved.has("catalog_ann")
    np.testing.assert_array_equal(loaded.search(q, 3)[0], index.search(q, 3)[0])
    (tmp_path / "ann" / "ann.faiss").write_bytes(b"\0" * 64)   # tampered: refused by its sha256 before faiss reads it
    with pytest.raises(BundleError):
        Bundle.load(tmp_path / "ann")


def test_price_helpers():
    assert read_price(["NORDA", "$4.99"]) == 4.99 and read_price(["12,50 €"]) == 12.5 and read_price(["NORDA"]) is None
    tie = [Match("a", "c", 10.0, 0.9, 0.9), Match("b", "c", 20.0, 0.9, 0.9)]
    assert (estimate_price(tie).value, estimate_price(tie).low, estimate_price(tie).high) == (15.0, 10.0, 20.0)
    clear = [Match("a", "c", 10.0, 0.95, 0.95), Match("b", "c", 20.0, 0.7, 0.7)]
    assert estimate_price(clear).value == pytest.approx(10.0, abs=0.01) and estimate_price(clear).high == 10.0
    p = Product("NORDA Red Cola", "x", 1.0, extra={"brand": "NORDA"})
    assert text_match(["N0RDA", "$1.49"], p) >= 0.75 and text_match(["KIVO"], p) == 0.0


def test_ocr_reads_label_and_price_and_reranks_look_alikes(default_bundle, catalog):
    pytest.importorskip("rapidocr_onnxruntime", reason="OCR extra not installed: pip install 'edgesight[ocr]'")
    csv_path, listed, _ = catalog
    pr = ProductRecognizer.from_pretrained(default_bundle, catalog=csv_path, threads=1, ocr=True)
    product = listed[2]
    result = pr(render(product))
    assert product.brand in " ".join(result.ocr.text).upper(), result.ocr
    assert result.ocr.price == product.price
    assert result.title == product.title and result.matches[0].text_score >= 0.75
    assert result.matches[0].score > result.matches[0].similarity  # the text bonus is what re-ranked
    # The same package under a brand the catalogue does not have: looks listed, reads unlisted -> unknown.
    from dataclasses import replace
    impostor = replace(product, brand="GRAVO", title="GRAVO " + product.title.split(" ", 1)[1])
    assert pr(render(impostor), ocr=False).title == product.title      # the picture alone is fooled
    result = pr(render(impostor))
    assert result.unknown and "names none" in result.unknown_reason, result.ocr


def test_cli_recognises_and_saves_an_index(default_bundle, catalog, tmp_path, capsys):
    from edgesight.cli import main

    csv_path, listed, _ = catalog
    photo = tmp_path / "q.jpg"
    render(listed[3]).save(photo)
    assert main(["products", str(photo), "--model", str(default_bundle), "--catalog", str(csv_path),
                 "--save-index", str(tmp_path / "idx"), "--threads", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["results"][0]["title"] == listed[3].title and out["catalog"]["items"] == len(listed)
    assert (tmp_path / "idx" / "edgesight.json").is_file()
    assert main(["products", str(tmp_path / "nope.jpg"), "--model", str(default_bundle), "--threads", "1"]) == 2
    assert "no such image file" in capsys.readouterr().err


def test_http_payload_decodes_to_the_same_result(recognizer, catalog):
    _, listed, _ = catalog
    buf = io.BytesIO()
    render(listed[4]).save(buf, "PNG")
    image = from_json({"image": base64.b64encode(buf.getvalue()).decode()})
    assert recognizer(image).title == listed[4].title


def test_clip_image_tower_exports_as_an_encoder_bundle(tmp_path):
    """A user's CLIP image tower takes the same path (tiny CLIP from a config: same code, random weights)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from edgesight.encoder import ImageEncoder
    from edgesight.export.image_encoder import clip_preprocessing, clip_vision, export_image_encoder

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(cfg).save_pretrained(tmp_path / "clip")
    bundle = export_image_encoder(clip_vision(tmp_path / "clip"), tmp_path / "clip-enc", name="clip",
                                  preprocessing=clip_preprocessing(32), calibration=[real_photo("coffee")], progress=False)
    assert bundle.manifest["outputs"]["embedding"] == 16 and not bundle.has("labels")
    assert bundle.manifest["fidelity"]["embedding_cosine_min"] > 0.999
    emb = ImageEncoder.from_bundle(bundle).embed([real_photo("coffee"), real_photo("chelsea")])
    assert emb.shape == (2, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_eval_reports_accuracy_price_error_and_unknowns(default_bundle, tmp_path):
    from edgesight.evaluation.products import run_eval

    report = run_eval(default_bundle, threads=1, benchmarks="packaged", products=8, views=1, holdout=2, ocr="off")
    row = report["results"][0]
    assert report["catalogue"] == {"products": 8, "views": 1, "held_out": 2, "seed": 0}
    assert row["queries"] == 8 and row["unknown_queries"] == 2 and row["top1_title_accuracy"] >= 0.5, row
    assert row["non_product_photos"] == 7 and row["non_product_unknown_rate"] == 1.0, row
    assert row["price_mae"] >= 0 and row["median_ms"] > 0
    from edgesight.cli import main
    assert main(["eval", "products", "--model", str(default_bundle), "--benchmarks", "packaged", "--products", "2",
                 "--views", "1", "--holdout", "1",
                 "--ocr", "off", "--threads", "1", "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["catalogue"]["products"] == 2


def test_static_int8_without_calibration_photos_is_refused(tmp_path):
    from edgesight.export.image_encoder import main

    with pytest.raises(SystemExit, match="static int8 needs calibration images"):
        main(["--out", str(tmp_path / "enc"), "--precision", "int8"])
    assert not (tmp_path / "enc").exists()  # nothing half-written


def test_http_route_recognises_a_product_on_a_real_server(default_bundle, catalog, tmp_path):
    import httpx

    from benchmarks.serve_load import start_server, stop_server

    csv_path, listed, _ = catalog
    proc, url = start_server(["--model", f"products={default_bundle}", "--threads", "1"],
                             env={"EDGESIGHT_HOME": str(tmp_path), "EDGESIGHT_PRODUCTS_CATALOG": str(csv_path)})
    try:
        buf = io.BytesIO()
        render(listed[7]).save(buf, "JPEG", quality=85)
        r = httpx.post(url + "/v1/products", json={"image": base64.b64encode(buf.getvalue()).decode()}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["title"] == listed[7].title and r.json()["matches"]
        bad = httpx.post(url + "/v1/products", json={"photo": "x"}, timeout=60)
        assert bad.status_code == 400 and "products request" in bad.json()["error"]
    finally:
        stop_server(proc)


def test_reshoot_query_photos_calibrate_on_documented_reshoots(default_bundle, catalog):
    """query_photos="reshoot": the calibration probes are re-shoots on the catalogue's own background (the documented
    query conditions), 4 per item, a listed item flagged costing 3 look-alikes; they score their own item higher than
    the shelf probes (other backgrounds, occluders), so the cuts the catalogue derives sit higher."""
    csv_path, listed, _ = catalog
    shelf, reshoot = (ProductRecognizer.from_pretrained(default_bundle, catalog=csv_path, threads=1, views=2, query_photos=q)
                      for q in ("shelf", "reshoot"))
    a, b = shelf.catalog.calibration, reshoot.catalog.calibration
    assert (a["probes_from"], a["probes"], a["listed_cost"]) == ("shelf", 2 * len(listed), 2.0)
    assert (b["probes_from"], b["probes"], b["listed_cost"]) == ("reshoot", 4 * len(listed), 3.0)
    assert b["listed_median"] > a["listed_median"]
    assert reshoot.threshold == b["threshold"] and reshoot.threshold_source == "catalogue"
    with pytest.raises(InputError, match="query_photos"):
        ProductRecognizer.from_pretrained(default_bundle, threads=1, query_photos="studio")


def test_shop_photos_set_the_unknown_rule_and_bad_rows_are_reported(default_bundle, catalog, tmp_path, capsys):
    import csv

    from edgesight.cli import main

    csv_path, listed, held_out = catalog
    rows = [("title", "local_image_path")]
    for i, (img, p) in enumerate(photo_queries(listed, views=2, seed=77)):
        img.save(tmp_path / f"{i}.jpg")
        rows.append((p.title, f"{i}.jpg"))
    rows += [(held_out[0].title, "0.jpg"), (listed[0].title, "missing.jpg")]   # lines 34 and 35
    with open(tmp_path / "photos.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    pr = ProductRecognizer.from_pretrained(default_bundle, catalog=csv_path, threads=1, views=2)
    synthetic = dict(pr.catalog.calibration)
    got = pr.calibrate(tmp_path / "photos.csv")
    assert got["probes_from"] == "photos" and got["photos"] == 2 * len(listed) and got["probes"] == 2 * len(listed)
    assert [(i["row"], i["title"]) for i in got["issues"]] == [(34, held_out[0].title), (35, listed[0].title)]
    assert pr.threshold == got["threshold"] and pr.catalog.calibration["probes_from"] == "photos" != synthetic["probes_from"]
    pr.catalog.save(tmp_path / "idx")
    assert CatalogIndex.load(tmp_path / "idx").calibration == pr.catalog.calibration
    with pytest.raises(CatalogError, match="at least 3 listed products"):
        pr.calibrate([(render(listed[0]), listed[0].title), (render(listed[1]), listed[1].title)])
    assert main(["products", "--model", str(default_bundle), "--catalog", str(csv_path), "--views", "2",
                 "--calibration-photos", str(tmp_path / "photos.csv"), "--threads", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["calibration"]["probes_from"] == "photos" and len(out["calibration"]["issues"]) == 2
