"""The pre-training corpus (issue #12): disjoint from every fine-tuning set (image bytes and
cleaned captions, checked on real generated files), pairs only, a held-out split, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from rasa.data.annotations import Annotations
from rasa.data.corpus import ANNOTATIONS, META_FILE, CorpusSpec, build_corpus
from rasa.data.synth import RAW_FILES, generate
from rasa.data.text import clean_caption
from rasa.errors import ConfigError

FINE = ("ft", "cuhk", 12, 0)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fine_tuning_set(tmp_path_factory) -> tuple[set[str], set[str]]:
    """Image-byte hashes and cleaned captions of a fine-tuning set, from its generated files."""
    root = tmp_path_factory.mktemp("finetune")
    generate(FINE[1], FINE[2], FINE[3], root, progress=False)
    images = {_sha(p) for p in (root / "imgs").rglob("*") if p.is_file()}
    raw = json.loads((root / RAW_FILES["cuhk"]).read_text(encoding="utf-8"))
    captions = {clean_caption(c) for r in raw for c in r["captions"]}
    return images, captions


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A corpus drawn with the fine-tuning set's own seed: its first identities ARE the
    fine-tuning ones, so the filter has something to remove."""
    out = tmp_path_factory.mktemp("corpus")
    spec = CorpusSpec(ids={"cuhk": 20, "flickr": 12}, seed=0, heldout=0.1, exclude=(FINE,))
    build_corpus(spec, out, progress=False)
    return out


def test_corpus_is_disjoint_from_fine_tuning_images_and_captions(corpus, fine_tuning_set) -> None:
    ft_images, ft_captions = fine_tuning_set
    ann = Annotations.load(corpus / ANNOTATIONS)
    root = ann.resolve_image_root(corpus / ANNOTATIONS)
    corpus_images = {_sha(root / r.image) for r in ann.records}
    corpus_captions = {clean_caption(c) for r in ann.records for c in r.captions}
    assert not corpus_images & ft_images
    assert not corpus_captions & ft_captions
    meta = json.loads((corpus / META_FILE).read_text(encoding="utf-8"))
    removed = meta["removed_as_fine_tuning_duplicates"]
    assert removed["images"] > 0  # the same seed repeats the fine-tuning identities
    # what is left of the overlapping preset are identities 13-20 (and nothing of 1-12)
    assert 0 < meta["per_preset"]["cuhk"]["images"]


def test_corpus_without_the_filter_would_overlap(tmp_path, fine_tuning_set) -> None:
    """The control: the same corpus with nothing excluded shares images with the fine-tuning
    set, so the test above measures the filter, not luck."""
    spec = CorpusSpec(ids={"cuhk": 14}, seed=0, heldout=0.1)
    build_corpus(spec, tmp_path, progress=False)
    ann = Annotations.load(tmp_path / ANNOTATIONS)
    root = ann.resolve_image_root(tmp_path / ANNOTATIONS)
    assert {_sha(root / r.image) for r in ann.records} & fine_tuning_set[0]


def test_corpus_is_pairs_with_a_heldout_split(corpus) -> None:
    ann = Annotations.load(corpus / ANNOTATIONS)
    pids = [r.pid for r in ann.records]
    assert len(set(pids)) == len(pids)  # every image its own identity: no person ids
    stats = ann.stats()
    assert set(stats) == {"train", "val"}
    assert stats["val"]["images"] == round(0.1 * len(ann.records))
    assert {r.image.split("/")[0] for r in ann.records} == {"cuhk", "flickr"}


def test_corpus_is_deterministic(corpus, tmp_path) -> None:
    spec = CorpusSpec(ids={"cuhk": 20, "flickr": 12}, seed=0, heldout=0.1, exclude=(FINE,))
    build_corpus(spec, tmp_path, progress=False)
    for name in (ANNOTATIONS, META_FILE):
        assert (tmp_path / name).read_bytes() == (corpus / name).read_bytes()


def test_spec_from_params_excludes_every_synth_dataset() -> None:
    params = {
        "data": {"datasets": {
            "a": {"source": "synth", "preset": "cuhk", "ids": 300, "seed": 0},
            "b": {"source": "synth", "preset": "cub", "ids": 20, "seed": 3},
            "real": {"source": "path", "path": "x", "format": "cuhk-pedes"},
        }},
        "pretrain": {"corpus": {"ids": {"rstp": 50}, "seed": 7, "heldout": 0.05}},
    }  # fmt: skip
    spec = CorpusSpec.from_params(params)
    assert spec.exclude == (("a", "cuhk", 300, 0), ("b", "cub", 20, 3))
    assert spec.ids == {"rstp": 50} and spec.seed == 7


@pytest.mark.parametrize(
    "kwargs", [{"ids": {"nope": 10}}, {"ids": {"cuhk": 2}}, {"ids": {}}, {"ids": {"cuhk": 9},
                                                                       "heldout": 0.7}]
)  # fmt: skip
def test_bad_spec_is_refused(kwargs) -> None:
    with pytest.raises(ConfigError, match="pretrain.corpus"):
        CorpusSpec(**kwargs)
