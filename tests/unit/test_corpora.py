"""Corpora: ICL generators, text windows, digests, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from transformers import AutoTokenizer

from ie_flow import IEFlowError
from ie_flow.config import CorpusSpec
from ie_flow.corpora import build_corpus
from ie_flow.corpora.icl import icl_corpus
from ie_flow.corpora.text import text_corpus


@pytest.fixture(scope="module")
def tok(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


def test_icl_sequences_are_names_and_commas(tok):
    c = icl_corpus("countries", tok, shots=4, samples=2000, seed=0)
    comma = tok(",", add_special_tokens=False).input_ids[0]
    assert c.input_ids.shape == (2000, 8)
    assert (c.input_ids[:, 1::2] == comma).all()
    names = c.input_ids[:, 0::2]
    assert len(np.unique(names)) == 16 == c.settings["K"]
    assert all(len(set(row)) == 4 for row in names)  # drawn without replacement
    # the decoded text is what the tokenizer makes of the joined string
    text = ",".join(c.settings["names"][:2]) + ","
    assert tok(text, add_special_tokens=False).input_ids == [
        tok(c.settings["names"][0], add_special_tokens=False).input_ids[0], comma,
        tok(c.settings["names"][1], add_special_tokens=False).input_ids[0], comma,
    ]
    # uniform draws: prefix entropy ~ log2 K, log2 K(K-1) (docs/METHOD.md section 6), capped by log2 n
    h = c.prefix_entropy_bits()
    assert abs(h[0] - 4) < 0.02 and h[0] == h[1]
    assert abs(h[2] - math.log2(16 * 15)) < 0.2 and h[7] <= math.log2(2000) + 1e-9


def test_digest_is_stable_and_sensitive(tok):
    a = icl_corpus("animals", tok, 3, 100, seed=1)
    b = icl_corpus("animals", tok, 3, 100, seed=1)
    c = icl_corpus("animals", tok, 3, 100, seed=2)
    assert a.digest == b.digest and a.dataset_id == b.dataset_id
    assert a.digest != c.digest
    np.testing.assert_array_equal(a.input_ids, b.input_ids)


def test_mixed_uses_all_categories(tok):
    c = icl_corpus("mixed", tok, 2, 500, seed=0)
    assert c.settings["K"] == 48
    assert len(np.unique(c.input_ids[:, 0::2])) > 40


def test_matched_mix_has_the_one_category_prefix_entropy_and_mixes(tok):
    """icl-mixed-matched: sequences that mix categories from a pool of K = 16 names, so the plug-in
    entropy of its prefixes is the one-category corpora's at every position (the mix of all 48 is not)."""
    for shots in range(1, 6):
        matched = build_corpus(CorpusSpec(name="icl-mixed-matched", shots=shots, samples=4096, seed=3), tok)
        h = matched.prefix_entropy_bits()
        for one in ("icl-countries", "icl-animals", "icl-colours"):
            h_one = build_corpus(CorpusSpec(name=one, shots=shots, samples=4096, seed=3), tok).prefix_entropy_bits()
            assert np.abs(np.subtract(h, h_one)).max() <= 0.01, (shots, one, h, h_one)
        assert abs(h[0] - 4) < 0.01  # log2 16 (plug-in, 4,096 draws)
        every = build_corpus(CorpusSpec(name="icl-mixed", shots=shots, samples=4096, seed=3), tok)
        assert every.prefix_entropy_bits()[0] > 5.5  # log2 48 = 5.58: why icl-mixed is not the comparison
    assert matched.settings["K"] == 16 and len(np.unique(matched.input_ids[:, 0::2])) == 16
    cats = matched.settings["name_categories"]
    assert sorted(cats.count(c) for c in set(cats)) == [5, 5, 6]
    # its sequences mix categories: at 2 shots all but (6*5 + 5*4 + 5*4) / (16*15) = 29.2% do
    two = build_corpus(CorpusSpec(name="icl-mixed-matched", shots=2, samples=4096, seed=3), tok)
    category = {tok(n, add_special_tokens=False).input_ids[0]: c for n, c in zip(two.settings["names"], cats)}
    mixed = np.mean([len({category[t] for t in row}) > 1 for row in two.input_ids[:, 0::2]])
    assert abs(mixed - (1 - 70 / 240)) < 0.03, mixed
    five = matched.input_ids[:, 0::2]  # 5 shots: all one category in (6*5*4*3*2 + 2*5*4*3*2*1) / 524,160
    assert np.mean([len({category[t] for t in row}) == 1 for row in five]) < 0.005


def test_unknown_builtin_suggests(tok):
    with pytest.raises(IEFlowError, match="did you mean 'icl-colours'"):
        build_corpus(CorpusSpec(name="icl-colors"), tok)


def test_text_windows_skip_forbidden_characters(tok, tmp_path):
    path = tmp_path / "c.jsonl"
    docs = [
        {"text": "the cat sat on the mat. the cat is a cat: and mat."},
        {"text": "a cat sat; the mat is the mat. France and Spain and Italy"},
        {"text": "the mat sat on a cat"},
    ]
    path.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    c = text_corpus(str(path), tok, tokens=4, samples=10)
    decoded = [tok.decode(r) for r in c.input_ids]
    # the window, not the sentence, must be free of `: ? - ;`: "a cat sat ;" is skipped
    assert decoded == ["the cat sat on", "the cat is a", "France and Spain and", "the mat sat on"]
    last = text_corpus(str(path), tok, tokens=3, samples=10, window="last")
    assert tok.decode(last.input_ids[0]) == "the mat."  # the sentence keeps its full stop


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"\x00\x01\x02binary\n", "binary"),
        (b"caf\xe9 latin-1\n", "not valid UTF-8"),
        (b'{"body": "the cat sat on the mat"}\n', "no field 'text'"),
        (b'{"text": "a cat"}\n', "no sentence"),
    ],
)
def test_bad_text_corpora_raise_clear_errors(tok, tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(IEFlowError, match=message):
        text_corpus(str(path), tok, tokens=5, samples=10)


def test_plain_text_and_parquet(tok, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "c.txt").write_text("the cat sat on the mat.\n\nthe mat is a cat.\n")
    assert text_corpus(str(tmp_path / "c.txt"), tok, 3, 10).num_samples == 2
    pq.write_table(pa.table({"body": ["the cat sat on the mat."]}), tmp_path / "c.parquet")
    assert text_corpus(str(tmp_path / "c.parquet"), tok, 3, 10, text_field="body").num_samples == 1
    with pytest.raises(IEFlowError, match="no column 'text'"):
        text_corpus(str(tmp_path / "c.parquet"), tok, 3, 10)
