"""Built-in text corpora: python-docs (pydoc_data) and fortunes cleaned into prose, cut into
windows like any text file, with stable digests; clear errors for missing data and bad names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ie_flow import IEFlowError
from ie_flow.config import CorpusSpec
from ie_flow.corpora import build_corpus
from ie_flow.corpora.builtin import (
    builtin_corpus, clean_fortune, clean_rendered_docs, fortunes_documents, python_docs_documents, split_fortunes,
)
from ie_flow.corpora.text import FORBIDDEN_IN_WINDOW

# Sphinx's plain-text rendering, as pydoc_data.topics holds it, with one of each construct
RENDERED = '''The "demo" statement
********************

Demo statements are a *convenient* way to show
**cleaning** of :func:`len` and ``literals`` [1]:

   demo_stmt ::= "demo" expression

The simple form is equivalent to

   if __debug__:
       print(x)

>>> demo(1)
... still code

+-----------+--------------+
| Operator  | Description  |
|===========|==============|
| "x"       | A value      |
+-----------+--------------+

* First item of a list, whose text
  continues on a second line.

1. A numbered item for a non-
   negative number.

Note:

  The body of a note is indented.

object.__demo__(self, other)
object.__undemo__(self)

   Called to demo something.

Some subsection
===============

-[ Footnotes ]-

[1] A footnote with text that
    continues here.
'''

FORTUNES = """A banker is a fellow who lends you his umbrella when the sun is shining
and wants it back the minute it begins to rain.
\t\t-- Mark Twain
%
\tB\bBo\bol\bld text, as nroff wrote it, stays readable here.
\tA second paragraph starts with a tab.

A new paragraph after a blank line keeps going.
%
     /\\_/\\     the cat
    ( o.o )    sat on
     > ^ <     the mat
%
Q: Why?  A: Because.
"""


def word_tokenizer(texts: list[str]):
    """A word-level tokenizer over the words and marks of `texts` (no download, ~10 ms)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t)})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_rendered_docs_keep_prose_only():
    assert clean_rendered_docs(RENDERED) == [
        "Demo statements are a convenient way to show cleaning of len and literals:",
        "The simple form is equivalent to",
        "First item of a list, whose text continues on a second line.",
        "A numbered item for a non-negative number.",
        "A footnote with text that continues here.",
    ]


def test_a_real_pydoc_topic():
    from pydoc_data.topics import topics

    paragraphs = clean_rendered_docs(topics["assert"])
    assert paragraphs[0] == "Assert statements are a convenient way to insert debugging assertions into a program:"
    assert 'Assignments to "__debug__" are illegal. The value for the built-in variable is determined when the ' \
           "interpreter starts." in paragraphs
    joined = " ".join(paragraphs)
    assert "assert_stmt" not in joined and "raise AssertionError" not in joined  # grammar and code dropped
    assert 'The "assert" statement' not in joined and "****" not in joined  # heading dropped


def test_fortunes_lose_attribution_art_and_overstriking():
    fortunes = split_fortunes(FORTUNES)
    assert len(fortunes) == 4
    assert [clean_fortune(f) for f in fortunes] == [
        ["A banker is a fellow who lends you his umbrella when the sun is shining and wants it back the minute "
         "it begins to rain."],
        ["Bold text, as nroff wrote it, stays readable here. A second paragraph starts with a tab.",
         "A new paragraph after a blank line keeps going."],
        [],  # ASCII art: aligned columns
        [],  # too few words
    ]


def _fortunes_folder(folder: Path) -> Path:
    folder.mkdir()
    (folder / "wisdom").write_text(FORTUNES)
    (folder / "ascii-art").write_text("An art file full of words is still skipped by its name.\n")
    (folder / "notes").write_text("A file without a strfile index is not a fortune file at all.\n")
    for name in ("wisdom", "ascii-art"):
        (folder / f"{name}.dat").write_bytes(b"\x00\x00\x00\x02")  # strfile's index beside each file
    return folder


def test_fortunes_folder(tmp_path):
    docs, settings = fortunes_documents(_fortunes_folder(tmp_path / "fortunes"))
    assert settings["files"] == ["wisdom"]
    assert len(docs) == 3 and docs[0].startswith("A banker is a fellow")


def test_missing_fortunes_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("ie_flow.corpora.builtin.FORTUNES_DIR", tmp_path / "absent")
    with pytest.raises(IEFlowError, match=r"needs Debian's fortunes package .*: apt-get install fortunes"):
        build_corpus(CorpusSpec(name="fortunes"), word_tokenizer(["a"]))


def test_python_docs_windows_and_stable_digest():
    docs, _ = python_docs_documents()
    tok = word_tokenizer(docs)
    a = builtin_corpus("python-docs", tok, tokens=8, samples=300, seed=0)
    b = build_corpus(CorpusSpec(name="python-docs", tokens=8, samples=300, seed=0), tok)
    assert a.digest == b.digest and a.num_samples == 300 and a.name == "python-docs-8tok"
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    assert a.settings["python"] and a.settings["documents"] == len(set(docs))  # topics repeat paragraphs
    c = builtin_corpus("python-docs", tok, tokens=8, samples=300, seed=1)  # another document order
    assert c.digest != a.digest
    sentence_starts = {" ".join(tok.convert_ids_to_tokens(tok(s, add_special_tokens=False).input_ids[:8]))
                       for d in docs for s in re.split(r"(?<=[.!?])\s+", d)}
    for row in a.input_ids:  # each window is the first 8 tokens of one sentence, free of `: ? - ;`
        assert " ".join(tok.convert_ids_to_tokens(row.tolist())) in sentence_starts
        assert not FORBIDDEN_IN_WINDOW.search(tok.decode(row))
    info = a.describe(tok, examples=2)
    assert info["samples"] == 300 and len(info["prefix_entropy_bits"]) == 8


@pytest.mark.skipif(not Path("/usr/share/games/fortunes/literature").is_file(), reason="apt-get install fortunes")
def test_the_installed_fortunes():
    docs, settings = fortunes_documents()
    assert len(docs) > 10_000 and "ascii-art" not in settings["files"] and "literature" in settings["files"]
    assert "A horse! A horse! My kingdom for a horse!" in docs  # its "-- Wm. Shakespeare" line removed
    assert not any("\x08" in d or "\n" in d for d in docs)


@pytest.mark.parametrize("name, hint", [("fortune", "did you mean 'fortunes'"),
                                        ("python-doc", "did you mean 'python-docs'"),
                                        ("pydocs", "not a built-in (icl-countries")])
def test_unknown_corpus_names(name, hint):
    with pytest.raises(IEFlowError, match=re.escape(hint)):
        build_corpus(CorpusSpec(name=name), word_tokenizer(["a"]))


def test_cli_describes_a_builtin_corpus(ie_flow, tiny_llama):
    from transformers import AutoTokenizer

    res = ie_flow("corpus", "--corpus", "python-docs", "--model", tiny_llama, "--tokens", 3, "--samples", 200,
                  "--preview", 2, "--json")
    assert res.code == 0, res.err
    info = json.loads(res.out)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    expected = build_corpus(CorpusSpec(name="python-docs", tokens=3, samples=200), tok)
    assert info["digest"] == expected.digest and info["name"] == "python-docs-3tok" and len(info["examples"]) == 2
    res = ie_flow("corpus", "--corpus", "python-doc", "--model", tiny_llama)
    assert res.code == 2 and res.error_lines == [res.error_lines[0]] and "did you mean 'python-docs'" in res.err


def _tokenizer_without(folder: Path, word: str) -> object:
    """The tiny word-level tokenizer with one word missing: it cuts that word to [UNK]."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from tokenizers import Tokenizer

    base = AutoTokenizer.from_pretrained(folder)
    raw = json.loads(base.backend_tokenizer.to_str())
    raw["model"]["vocab"] = {w: i for w, i in raw["model"]["vocab"].items() if w != word}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(raw)), unk_token="[UNK]")


def test_same_text_as_keeps_the_windows_both_tokenizers_cut_alike(tiny_llama, tmp_path, monkeypatch):
    """Two models are compared on the same text: a sentence is kept only if its N-token window is the
    same text under the other tokenizer too (here one that lacks "mat")."""
    from transformers import AutoTokenizer

    from ie_flow.corpora.text import same_window_text

    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. a cat is on a mat and the cat sat. the cat sat on a dog and a cat.")
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    other = _tokenizer_without(tiny_llama, "mat")
    assert not same_window_text("the cat sat on the mat", "the cat sat on the mat", other, 6, "first")
    assert same_window_text("the cat sat on a dog", "the cat sat on a dog", other, 6, "first")
    monkeypatch.setattr("ie_flow.corpora._other_tokenizer", lambda name: other if name else None)
    spec = CorpusSpec(name=str(text), tokens=6, samples=10)
    plain, aligned = build_corpus(spec, tok), build_corpus(spec.model_copy(update={"same_text_as": "other"}), tok)
    assert [tok.decode(r) for r in plain.input_ids] == ["the cat sat on the mat", "a cat is on a mat",
                                                         "the cat sat on a dog"]
    assert [tok.decode(r) for r in aligned.input_ids] == ["the cat sat on a dog"]
    assert aligned.settings["same_text_as"] == "other" and aligned.dataset_id != plain.dataset_id
