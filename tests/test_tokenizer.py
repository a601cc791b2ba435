"""Tokenizer specs: learnt WordPiece, BERT vocab.txt, the MiniLM vocabulary; layout options."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from rasa.data.annotations import Annotations, Record
from rasa.data.text import clean_caption
from rasa.data.tokenizer import (
    SPECIAL_TOKENS,
    encode_captions,
    get_tokenizer,
    learn_wordpiece_vocab,
    minilm_vocab_path,
    special_ids,
)
from rasa.errors import ConfigError, DataError

TRAIN = [
    "A man wearing a black jacket, blue jeans and white shoes.",
    "The woman has long hair; she carries a red backpack!",
    "A man in a grey hoodie walking with a black bag.",
    "She is wearing a yellow dress and black shoes.",
]
TEST = ["An elephantine zebra-striped umbrella."]


def table() -> Annotations:
    recs = [Record(f"{i}.jpg", i // 2, "train", (c,)) for i, c in enumerate(TRAIN)]
    recs.append(Record("t.jpg", 99, "test", tuple(TEST)))
    return Annotations("tiny", "imgs", recs)


def test_wordpiece_learns_training_words_only():
    tok = get_tokenizer("wordpiece:400", table())
    vocab = tok.get_vocab()
    assert [vocab[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    for word in ("man", "wearing", "black", "shoes"):  # words seen at least twice
        assert word in vocab, word
    assert "umbrella" not in vocab and "zebra" not in vocab  # test captions are not used
    enc = tok.encode(clean_caption(TRAIN[0]))
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
    assert tok.decode(enc.ids) == clean_caption(TRAIN[0])  # rare words become pieces
    assert "[UNK]" not in enc.tokens


def test_wordpiece_is_deterministic_across_processes():
    code = (
        "from tests.test_tokenizer import table; from rasa.data.tokenizer import get_tokenizer;"
        "import hashlib; print(hashlib.sha256(get_tokenizer('wordpiece:60', table())"
        ".to_str().encode()).hexdigest())"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert len(outs) == 1


def test_learn_wordpiece_vocab_by_hand():
    # "ab" occurs 5 times, "abc" 2: merges a+##b (7), then ab+##c (2) with min_frequency=2.
    vocab = learn_wordpiece_vocab(Counter({"ab": 5, "abc": 2}), 100, special_tokens=("[P]",))
    assert vocab == ["[P]", "a", "##b", "##c", "ab", "abc"]
    # a tie (both pairs 3 times) goes to the smaller pair text, whatever the counts' order
    v1 = learn_wordpiece_vocab({"xy": 3, "uv": 3}, 5, special_tokens=())
    v2 = learn_wordpiece_vocab({"uv": 3, "xy": 3}, 5, special_tokens=())
    assert v1 == v2 == ["u", "x", "##v", "##y", "uv"]
    with pytest.raises(ConfigError, match="at least"):
        learn_wordpiece_vocab({"abc": 1}, 3, special_tokens=("[P]",))


def test_minilm_ids_match_vocab_lines():
    lines = minilm_vocab_path().read_text(encoding="utf-8").splitlines()
    tok = get_tokenizer("minilm")
    enc = tok.encode("a man")
    assert enc.ids == [lines.index(t) for t in ("[CLS]", "a", "man", "[SEP]")]
    assert special_ids(tok) == {
        "pad_id": 0,
        "unk_id": 100,
        "cls_id": 101,
        "sep_id": 102,
        "mask_id": 103,
    }


def test_bert_dir_spec_and_errors(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join([*SPECIAL_TOKENS, "a", "man", "##s"]) + "\n")
    tok = get_tokenizer(f"bert:{tmp_path}")
    assert tok.encode("A MANs").ids == [2, 5, 6, 7, 3]
    with pytest.raises(DataError, match="does not exist"):
        get_tokenizer(f"bert:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="vocab.txt"):
        get_tokenizer(f"bert:{tmp_path / 'empty'}")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match=r"\[PAD\]"):
        get_tokenizer(f"bert:{tmp_path / 'bad'}")
    for spec in ("gpt2", "wordpiece:x", "wordpiece:-3", "bert:", "minilm:3"):
        with pytest.raises(ConfigError):
            get_tokenizer(spec, table())
    with pytest.raises(ConfigError, match="annotation table"):
        get_tokenizer("wordpiece:100")


def test_add_sep_and_truncation():
    tok = get_tokenizer("minilm", add_sep=True, max_len=5)
    ids, mask = encode_captions(tok, ["a man", "a man in a red coat", ""])
    cls, sep, pad = 101, 102, 0
    a, man, in_, red = (tok.token_to_id(w) for w in ("a", "man", "in", "red"))
    assert ids.dtype.name == "int32" and mask.dtype.name == "uint8"
    assert ids.tolist() == [[cls, a, man, sep, pad], [cls, a, man, in_, sep], [cls, sep, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]

    tok = get_tokenizer("minilm", add_sep=False, max_len=5)
    ids, mask = encode_captions(tok, ["a man", "a man in a red coat"])
    assert ids.tolist() == [[cls, a, man, pad, pad], [cls, a, man, in_, a]]
    assert sep not in ids
    ids, _ = encode_captions(tok, ["A man (in) a RED-coat."])  # cleaned first
    assert ids.tolist() == [[cls, a, man, in_, a]]
    assert red in encode_captions(get_tokenizer("minilm", max_len=9), ["red-coat"])[0][0]
    with pytest.raises(ConfigError, match="at least 3"):
        get_tokenizer("minilm", add_sep=True, max_len=2)
