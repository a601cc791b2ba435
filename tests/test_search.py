"""``rasa search``: the same top-10 as ``rasa evaluate``, the embedding cache (reuse, one
changed file re-embedded), unreadable images skipped and counted, clear errors, truncation
notes, an official checkpoint, and the PNG/HTML outputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_train import MICRO  # the micro model of the training tests

from rasa.cli import main
from rasa.errors import ConfigError, DataError, RasaError

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = sorted(
    p
    for p in (ROOT / "tests" / "fixtures").iterdir()
    if (p / "checkpoint.pth").is_file() and (p / "config_bert.json").is_file()
)
QUERY = "a woman in a red coat with a black backpack"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A SynthPEDES CUHK-PEDES set of 150 identities (38 test images) and a micro ``itm``
    checkpoint trained briefly on it (about 10 s)."""
    from rasa.config import load_params, resolve_experiment
    from rasa.data.formats import parse_to_file
    from rasa.data.synth import generate
    from rasa.data.token_cache import build_cache
    from rasa.engine.train import train

    root = tmp_path_factory.mktemp("searchset")
    generate("cuhk", n_ids=150, seed=0, out=root / "raw", progress=False)
    ann, tok = root / "annotations.json", root / "tokens.npz"
    parse_to_file("auto", root / "raw", ann)
    build_cache(ann, "wordpiece:300", tok, progress=False)
    sets = [*MICRO, "variant=itm", f"annotations={ann}", f"tokens={tok}", "train.epochs=1",
            "train.max_steps=12"]  # fmt: skip
    cfg = resolve_experiment(load_params(ROOT / "params.yaml"), "synth-cuhk-tiny-cl", sets)
    train(cfg, root / "run", progress=False, dvclive=False)
    return {"root": root, "ann": ann, "tokens": tok, "ckpt": root / "run" / "checkpoint_best.pt"}


def run_search(ckpt: Path, gallery: Path, out: Path, *args: str) -> dict:
    argv = ["search", "--checkpoint", str(ckpt), "--gallery", str(gallery), "--out", str(out),
            "--no-png", "--no-progress", *args]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text())


def same_ranking(a: dict, b: dict) -> bool:
    """The same hits in the same order, scores equal up to float noise (an image embedded in
    a batch of another size differs in the last bits)."""
    for qa, qb in zip(a["queries"], b["queries"], strict=True):
        assert [h["name"] for h in qa["hits"]] == [h["name"] for h in qb["hits"]]
        for ha, hb in zip(qa["hits"], qb["hits"], strict=True):
            assert ha["score"] == pytest.approx(hb["score"], abs=1e-5)
            assert ha["first_stage"] == pytest.approx(hb["first_stage"], abs=1e-5)
    return True


@pytest.fixture()
def folder(trained, tmp_path) -> Path:
    """A folder gallery: the test split's images copied, in sub-folders as found."""
    from rasa.data.annotations import Annotations

    ann = Annotations.load(trained["ann"])
    src = ann.resolve_image_root(trained["ann"])
    dest = tmp_path / "gallery"
    for rec in ann.split("test")[:12]:
        (dest / rec.image).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rec.image, dest / rec.image)
    return dest


def test_same_top10_as_evaluate(trained, tmp_path) -> None:
    from rasa.data.annotations import Annotations

    topk = tmp_path / "topk.json"
    argv = ["evaluate", "--checkpoint", str(trained["ckpt"]), "--annotations",
            str(trained["ann"]), "--tokens", str(trained["tokens"]), "--split", "test",
            "--out", str(tmp_path / "eval.json"), "--topk-out", str(topk)]  # fmt: skip
    assert main(argv) == 0
    expected = json.loads(topk.read_text())["queries"]
    captions = [c for _, _, c in Annotations.load(trained["ann"]).captions("test")]
    assert [q["caption"] for q in expected] == captions
    (tmp_path / "queries.txt").write_text("\n".join(captions) + "\n")
    doc = run_search(
        trained["ckpt"], trained["ann"], tmp_path / "out", "--queries",
        str(tmp_path / "queries.txt"), "--cache", str(tmp_path / "cache"),
    )  # fmt: skip
    meta = json.loads((tmp_path / "eval.json").read_text())
    assert doc["k_test"] == meta["k"] == 8 and doc["num_gallery"] == meta["num_gallery"] == 38
    assert len(doc["queries"]) == len(expected) == 76
    for got, want in zip(doc["queries"], expected, strict=True):
        assert [h["name"] for h in got["hits"]] == want["topk_images"]
        assert [h["pid"] for h in got["hits"]] == want["topk_pids"]
        assert [h["rank"] for h in got["hits"]] == list(range(1, 11))
        scores = [h["score"] for h in got["hits"]]
        assert scores == sorted(scores, reverse=True)
        reranked = [h for h in got["hits"] if h["itm_probability"] is not None]
        assert len(reranked) == 8  # the top k_test, scored 2 + p
        for h in reranked:
            assert h["score"] == pytest.approx(2 + h["itm_probability"], abs=1e-6)
    # from the cache, the same ranking again
    again = run_search(
        trained["ckpt"], trained["ann"], tmp_path / "out2", "--queries",
        str(tmp_path / "queries.txt"), "--cache", str(tmp_path / "cache"),
    )  # fmt: skip
    assert again["embedded"] == 0 and again["queries"] == doc["queries"]


def test_cache_reuse_and_one_changed_file(trained, folder, tmp_path) -> None:
    ckpt, cache = trained["ckpt"], ["--cache", str(tmp_path / "cache")]
    first = run_search(ckpt, folder, tmp_path / "o1", QUERY, "--k", "12", *cache)
    assert first["embedded"] == 12 and first["num_gallery"] == 12 and first["num_skipped"] == 0
    second = run_search(ckpt, folder, tmp_path / "o2", QUERY, "--k", "12", *cache)
    assert second["embedded"] == 0 and second["queries"] == first["queries"]
    assert second["cache_file"] == first["cache_file"]

    # touch one file: only it is embedded again, and nothing changes in the ranking
    one = sorted(folder.rglob("*.png"))[3]
    st = one.stat()
    os.utime(one, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = run_search(ckpt, folder, tmp_path / "o3", QUERY, "--k", "12", *cache)
    assert third["embedded"] == 1 and same_ranking(third, first)

    # an added file is embedded alone; a removed one is dropped without embedding anything
    shutil.copy2(one, folder / "extra.png")
    fourth = run_search(ckpt, folder, tmp_path / "o4", QUERY, "--k", "13", *cache)
    assert fourth["embedded"] == 1 and fourth["num_gallery"] == 13
    (folder / "extra.png").unlink()
    fifth = run_search(ckpt, folder, tmp_path / "o5", QUERY, "--k", "12", *cache)
    assert fifth["embedded"] == 0 and same_ranking(fifth, first)

    # no cache: everything embedded, the same results
    fresh = run_search(ckpt, folder, tmp_path / "o6", QUERY, "--k", "12", "--no-cache")
    assert fresh["embedded"] == 12 and fresh["cache_file"] is None
    assert same_ranking(fresh, first)


def test_unreadable_images_are_skipped_and_counted(trained, folder, tmp_path) -> None:
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    good = sorted(folder.rglob("*.png"))[0].read_bytes()
    (folder / "sub").mkdir()
    (folder / "sub" / "cut.png").write_bytes(good[: len(good) // 3])  # truncated PNG
    (folder / ".hidden").mkdir()
    shutil.copy2(sorted(folder.rglob("*.png"))[0], folder / ".hidden" / "x.png")  # not listed
    cache = ["--cache", str(tmp_path / "cache")]
    doc = run_search(trained["ckpt"], folder, tmp_path / "o1", QUERY, "--k", "20", *cache)
    assert doc["num_files"] == 14 and doc["num_gallery"] == 12 and doc["num_skipped"] == 2
    assert sorted(s["name"] for s in doc["skipped"]) == ["broken.jpg", "sub/cut.png"]
    assert all(s["reason"] for s in doc["skipped"])
    assert len(doc["queries"][0]["hits"]) == 12
    assert not any(h["name"] in ("broken.jpg", "sub/cut.png") for h in doc["queries"][0]["hits"])
    again = run_search(trained["ckpt"], folder, tmp_path / "o2", QUERY, *cache)
    assert again["embedded"] == 0 and again["num_skipped"] == 2  # known bad: not re-read

    only_bad = tmp_path / "bad_gallery"
    only_bad.mkdir()
    (only_bad / "a.png").write_bytes(b"\x89PNG nope")
    with pytest.raises(DataError, match="none of its 1 images is readable"):
        _search_api(trained["ckpt"], only_bad, [QUERY])


def _search_api(ckpt: Path, gallery: Path, queries: list[str], **kw) -> dict:
    from rasa.search.searcher import load_search_model, search

    sm = load_search_model(ckpt, device="cpu", **kw)
    return search(sm, queries, gallery, cache_dir=None, progress=False)


def test_bad_input_errors(trained, folder, tmp_path, capsys) -> None:
    ckpt = trained["ckpt"]
    for query in ("", " ... !!"):
        with pytest.raises(ConfigError, match="query 1 .* is empty"):
            _search_api(ckpt, folder, [query])
    with pytest.raises(ConfigError, match="no query given"):
        _search_api(ckpt, folder, [])
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images found"):
        _search_api(ckpt, empty, [QUERY])
    with pytest.raises(DataError, match="no images in split 'dev'"):
        from rasa.search.searcher import load_search_model, search

        search(load_search_model(ckpt), [QUERY], trained["ann"], split="dev", cache_dir=None)

    weird = tmp_path / "weird.pt"
    torch.save({"model": {"encoder.layer.0.weight": torch.zeros(2)}}, weird)
    with pytest.raises(RasaError, match="unknown layout"):
        _search_api(weird, folder, [QUERY])

    # the CLI turns these into one paragraph and exit status 2
    argv = ["search", "--checkpoint", str(weird), "--gallery", str(folder), "--out",
            str(tmp_path / "o"), QUERY]  # fmt: skip
    assert main(argv) == 2
    assert "unknown layout" in capsys.readouterr().err
    (tmp_path / "q.txt").write_text("\n  \n")
    argv = ["search", "--checkpoint", str(ckpt), "--gallery", str(folder), "--out",
            str(tmp_path / "o"), "--queries", str(tmp_path / "q.txt")]  # fmt: skip
    assert main(argv) == 2
    assert "has no query" in capsys.readouterr().err

    # a run whose token cache moved away: say where the tokenizer comes from
    with pytest.raises(ConfigError, match="--tokens FILE"):
        _search_api(ckpt, folder, [QUERY], tokens=tmp_path / "gone.npz")


def test_long_query_is_truncated_and_says_so(trained, folder, tmp_path) -> None:
    words = "red coat black backpack blue jeans white shoes".split()
    long_query = " ".join(words[i % len(words)] for i in range(60))  # > 50 words
    medium = " ".join(words[i % len(words)] for i in range(45))  # < 50 words, > 50 tokens?
    doc = run_search(
        trained["ckpt"], folder, tmp_path / "o", long_query, medium, QUERY, "--no-cache"
    )
    q_long, q_medium, q_short = doc["queries"]
    assert q_long["truncated"] and "10 of 60 words dropped" in q_long["note"]
    assert "truncated to the model's 50 tokens" in q_long["note"]
    from rasa.data.token_cache import load_cache

    n_tokens = len(load_cache(trained["tokens"]).tokenizer().encode(medium).overflowing)
    assert q_medium["truncated"] == (n_tokens > 0)
    assert not q_short["truncated"] and q_short["note"] is None


@pytest.mark.parametrize("fixture", FIXTURES, ids=[p.name for p in FIXTURES])
def test_official_checkpoint(fixture, tmp_path) -> None:
    """An official checkpoint: stretch resize, [CLS]-without-[SEP] BERT tokens; both stages
    equal a direct computation with the loaded model."""
    from rasa.data.text import clean_caption
    from rasa.data.tokenizer import get_tokenizer
    from rasa.data.transforms import ImageTransform, load_image
    from rasa.models.loaders import load_official
    from rasa.search.searcher import load_search_model

    ckpt = fixture / "checkpoint.pth"
    model = load_official(ckpt).eval()
    cfg = model.config
    # The fixture's vocabulary is tiny; BERT uncased's (30,522 ids) does not fit it.
    with pytest.raises(ConfigError, match=f"embeds only {cfg.vocab_size}"):
        load_search_model(ckpt, device="cpu")
    # a BERT-style vocab.txt of the checkpoint's size: specials at BERT's ids, words after
    words = "man woman red blue coat shirt black backpack bag with in a the".split()
    lines = [f"[unused{i}]" for i in range(cfg.vocab_size)]
    for tok, i in (("[PAD]", 0), ("[UNK]", 100), ("[CLS]", 101), ("[SEP]", 102), ("[MASK]", 103)):
        lines[i] = tok
    for j, w in enumerate(words):
        lines[104 + j] = w
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "vocab.txt").write_text("\n".join(lines) + "\n")

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    gen = torch.Generator().manual_seed(0)
    for i in range(5):
        pixels = torch.randint(0, 255, (40 + 7 * i, 20 + 3 * i, 3), generator=gen)
        Image.fromarray(pixels.to(torch.uint8).numpy()).save(gallery / f"img{i}.png")
    spec = f"bert:{tmp_path / 'vocab'}"
    doc = run_search(ckpt, gallery, tmp_path / "o", QUERY, "--tokenizer", spec, "--k", "5",
                     "--device", "cpu", "--cache", str(tmp_path / "cache"))  # fmt: skip
    assert doc["resize"] == "stretch" and doc["k_test"] == 5  # as `rasa evaluate`: k 128

    max_len = int(model.checkpoint_config.get("max_words", 50))
    tok = get_tokenizer(spec, add_sep=False, max_len=max_len)
    enc = tok.encode(clean_caption(QUERY))
    assert enc.ids[0] == 101 and 102 not in enc.ids  # [CLS] words, no [SEP]
    n = sum(enc.attention_mask)
    ids, mask = torch.tensor([enc.ids[:n]]), torch.ones(1, n, dtype=torch.long)
    transform = ImageTransform(cfg.image_size, cfg.mean, cfg.std, "stretch")
    names = [f"img{i}.png" for i in range(5)]
    images = torch.stack([transform(load_image(gallery / name)) for name in names])
    with torch.no_grad():
        image_tokens = model.encode_image(images)
        text_tokens = model.encode_text(ids, mask)
        sims = model.text_embed(text_tokens) @ model.image_embed(image_tokens).T
        fused = model.fuse(text_tokens.expand(5, -1, -1), mask.expand(5, -1), image_tokens)
        prob = torch.softmax(model.itm_logits(fused), -1)[:, 1]
    for hit in doc["queries"][0]["hits"]:
        i = names.index(hit["name"])
        assert hit["first_stage"] == pytest.approx(float(sims[0, i]), abs=1e-5)
        if hit["itm_probability"] is not None:
            assert hit["itm_probability"] == pytest.approx(float(prob[i]), abs=1e-5)
    reranked = [h for h in doc["queries"][0]["hits"] if h["itm_probability"] is not None]
    assert len(reranked) == doc["k_test"]
    assert [h["name"] for h in reranked] == sorted(
        [h["name"] for h in reranked], key=lambda name: -float(prob[names.index(name)])
    )


def test_png_html_and_stdout(trained, folder, tmp_path) -> None:
    """Through the console (a real subprocess): one JSON line per query, a PNG per query,
    and a page whose image links resolve from its own folder."""
    (tmp_path / "queries.txt").write_text(f"{QUERY}\na man in blue jeans\n")
    cmd = [sys.executable, "-m", "rasa", "search", "--checkpoint", str(trained["ckpt"]),
           "--gallery", str(folder), "--queries", str(tmp_path / "queries.txt"),
           "--out", str(tmp_path / "out"), "--html", str(tmp_path / "page"), "--k", "5",
           "--cache", str(tmp_path / "cache"), "--no-progress"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [q["query"] for q in lines] == [QUERY, "a man in blue jeans"]
    assert all(len(q["hits"]) == 5 for q in lines)
    assert "searched 12 images (0 skipped, 12 embedded now)" in proc.stderr
    for i in (1, 2):
        with Image.open(tmp_path / "out" / f"query-00{i}.png") as im:
            assert im.format == "PNG" and im.width > im.height
    page = (tmp_path / "page" / "index.html").read_text()
    assert QUERY in page and page.count("<figure>") == 10
    import re

    links = re.findall(r'<img src="([^"]+)"', page)
    assert len(links) == 10 and not any(Path(s).is_absolute() for s in links)
    assert all((tmp_path / "page" / s).resolve().is_file() for s in links)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["queries"] == lines and doc["timing"]["search_s"] > 0


def test_reranking_only_the_candidates_equals_the_full_gallery(trained, folder) -> None:
    """A few queries re-rank only their candidates' columns: the scores are those of the
    evaluation's re-ranker over the whole gallery."""
    from rasa.engine.evaluate import embed_texts, similarity
    from rasa.engine.ranking import rerank_topk
    from rasa.search.gallery import embed_gallery, list_gallery
    from rasa.search.searcher import encode_queries, load_search_model, rank

    sm = load_search_model(trained["ckpt"], device="cpu", k_test=3)
    emb = embed_gallery(sm.model, list_gallery(folder), checkpoint_sha="x", resize=sm.resize,
                        progress=False)  # fmt: skip
    queries = encode_queries(sm.tokenizer, [QUERY, "a man in a grey shirt and black shoes"])
    got = rank(sm, queries, emb, n=12)
    text_tokens, text_feats = embed_texts(sm.model, queries.ids, queries.mask, 8, sm.device)
    sims = similarity(text_feats, emb.image_feats, sm.device)
    full = rerank_topk(sm.model, text_tokens, queries.mask, sims, emb.image_tokens, 3)
    names = [f.name for f in emb.files]
    for row, q in enumerate(got):
        order = torch.argsort(full[row], descending=True, stable=True).tolist()
        assert [h["name"] for h in q["hits"]] == [names[i] for i in order]
        for h in q["hits"]:
            assert h["score"] == pytest.approx(float(full[row, names.index(h["name"])]), abs=1e-6)
        assert sum(h["itm_probability"] is not None for h in q["hits"]) == 3
