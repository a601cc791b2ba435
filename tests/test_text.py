from rasa.data.text import clean_caption


def test_punctuation_removed_and_lowercased():
    assert clean_caption('A Man, wearing "black" (shoes)! ok? #1: yes; ~no*') == (
        "a man wearing black shoes ok 1 yes no"
    )


def test_hyphen_and_slash_become_spaces():
    assert clean_caption("t-shirt/jeans and knee-length") == "t shirt jeans and knee length"


def test_person_token_and_apostrophe():
    assert clean_caption("The <person>'s bag") == "the persons bag"


def test_whitespace_collapsed_and_stripped():
    assert clean_caption("  a \t\n  b   c  ") == "a b c"


def test_truncated_to_max_words_before_wordpiece():
    text = " ".join(f"w{i}" for i in range(80))
    out = clean_caption(text)
    assert out.split() == [f"w{i}" for i in range(50)]
    assert clean_caption(text, max_words=3) == "w0 w1 w2"


def test_only_punctuation_gives_empty():
    assert clean_caption(" ... !!! ") == ""
