"""Built-in corpora of human-written English that a fresh machine has without any download:
`python-docs`, the prose of the Python documentation shipped inside CPython (pydoc_data.topics),
and `fortunes`, Debian's fortunes package (quotes, literature, poems). Both are cleaned into
paragraphs of prose here and cut into windows by the same code as any text file (text.py)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ie_flow import IEFlowError

BUILTIN_TEXT_CORPORA = ("python-docs", "fortunes")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
# pictures and Latin, not English prose
FORTUNES_SKIPPED = ("ascii-art", "translate-me")

HEADING_RULE = re.compile(r"^([*=\-~^\"#+`'])\1{2,}\s*$")  # the line under a rendered heading
TABLE_LINE = re.compile(r"^\s*(\+[-=+]+\+|\|)")
LIST_MARKER = re.compile(r"^(?:[*+-]|\d+\.|#\.|\[\d+\])\s+")  # bullets, numbered items, footnotes
SIGNATURE = re.compile(r"^(class\s+)?[\w.]+\(.*\)\s*$")  # a definition's term: object.__new__(cls)
ADMONITION = re.compile(r"^(Note|See also|Warning|Important|Tip|Caution|Attention|Hint):\s*$")
REST_ROLE = re.compile(r":[\w.+-]+:`([^`]*)`")  # :func:`len` -> len
INLINE_MARKUP = (
    (re.compile(r"``([^`]+)``"), r"\1"),  # ``literal``
    (re.compile(r"`([^`]+)`_*"), r"\1"),  # `interpreted text`, `link`_
    (re.compile(r"\*\*([^*]+)\*\*"), r"\1"),  # **strong**
    (re.compile(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])"), r"\1"),  # *emphasis*
    (re.compile(r"\s*\[\d+\](?!\w)"), ""),  # footnote references
    (re.compile(r"::$"), ":"),  # `text::` introduces a literal block
)
ATTRIBUTION = re.compile(r"^\s*--\s*\S")  # "\t\t-- Mark Twain" ends a fortune's text
ALIGNED_COLUMNS = re.compile(r"\S {3,}\S")  # ASCII art, tables, aligned verse numbers
# nroff bold/underline: "B\bB" prints B, "_\bw" an underlined w, "___\bword" an underlined word
OVERSTRIKE = re.compile(r"_+\x08+|[^\x08]\x08|\x08")
MIN_WORDS = 4
MIN_LETTER_SHARE = 0.6  # of the non-space characters: below this a paragraph is code or symbols


def _paragraphs(text: str) -> list[list[str]]:
    """Blocks of lines separated by blank lines."""
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip():
            blocks[-1].append(line.rstrip())
        elif blocks[-1]:
            blocks.append([])
    return [b for b in blocks if b]


def is_prose(paragraph: str) -> bool:
    """At least a few words, and mostly letters (drops signatures, grammar rules, symbols)."""
    words = re.findall(r"[A-Za-z]{2,}", paragraph)
    chars = [c for c in paragraph if not c.isspace()]
    letters = sum(c.isalpha() for c in chars)
    return len(words) >= MIN_WORDS and letters >= MIN_LETTER_SHARE * max(1, len(chars))


def join_lines(lines: list[str]) -> str:
    """Hard-wrapped lines -> one line; a word split after its hyphen ("non-" + "negative") is
    joined without the space."""
    text = ""
    for line in (l.strip() for l in lines):
        glue = "" if not text or (text[-1] == "-" and text[-2:-1].isalpha() and line[:1].islower()) else " "
        text += glue + line
    return " ".join(text.split())


def clean_inline(text: str) -> str:
    """reST roles and inline markup -> their text; whitespace collapsed."""
    text = REST_ROLE.sub(r"\1", text)
    for pattern, replacement in INLINE_MARKUP:
        text = pattern.sub(replacement, text)
    return " ".join(text.split())


def _doc_block_text(block: list[str]) -> str | None:
    """The prose of one rendered-docs block, or None for code, tables, headings, labels."""
    first = block[0]
    if first[:1].isspace():  # indented: code and grammar blocks (and the bodies of notes)
        return None
    if any(HEADING_RULE.match(l) or TABLE_LINE.match(l) or l.lstrip().startswith((">>>", "..."))
           for l in block):
        return None
    if ADMONITION.match(first) or first.startswith("-[") or all(SIGNATURE.match(l) for l in block):
        return None  # "Note:", "-[ Footnotes ]-", the signatures above a description
    marker = LIST_MARKER.match(first)
    lines = [first[marker.end():] if marker else first]
    for line in block[1:]:
        if line[:1].isspace() and not marker:  # a paragraph followed by an indented block
            break
        lines.append(line.strip())
    return clean_inline(join_lines(lines))


def clean_rendered_docs(text: str) -> list[str]:
    """Paragraphs of prose from Sphinx's plain-text rendering (pydoc_data.topics): headings,
    indented blocks, `>>>` sessions, tables, admonition labels and inline markup removed."""
    out = []
    for block in _paragraphs(text):
        prose = _doc_block_text(block)
        if prose and is_prose(prose):
            out.append(prose)
    return out


def python_docs_documents() -> tuple[list[str], dict[str, Any]]:
    from pydoc_data.topics import topics

    docs = [p for name in sorted(topics) for p in clean_rendered_docs(topics[name])]
    # the text ships with the interpreter: another Python version is another corpus
    return docs, {"python": "%d.%d.%d" % sys.version_info[:3], "topics": len(topics)}


def clean_fortune(text: str) -> list[str]:
    """Paragraphs of one fortune: the attribution line and all after it removed, hard-wrapped lines
    joined, overstriking undone; blocks of aligned columns (ASCII art, tables) dropped."""
    lines = []
    for line in OVERSTRIKE.sub("", text).splitlines():
        if ATTRIBUTION.match(line):
            break
        lines.append(line)
    out = []
    for block in _paragraphs("\n".join(lines)):
        if any(ALIGNED_COLUMNS.search(l.strip()) for l in block):
            continue
        prose = join_lines(block)
        if is_prose(prose):
            out.append(prose)
    return out


def split_fortunes(text: str) -> list[str]:
    """A fortune file holds fortunes separated by lines that hold only '%'."""
    return [f for f in re.split(r"^%\s*$", text, flags=re.M) if f.strip()]


def fortune_files(folder: Path) -> list[Path]:
    """Fortune files are the ones strfile indexed (a NAME.dat beside NAME)."""
    if not folder.is_dir():
        raise IEFlowError(f"corpus 'fortunes' needs Debian's fortunes package ({folder} not found): "
                          "apt-get install fortunes")
    files = sorted(p.with_suffix("") for p in folder.glob("*.dat") if p.with_suffix("").is_file())
    files = [p for p in files if p.name not in FORTUNES_SKIPPED]
    if not files:
        raise IEFlowError(f"corpus 'fortunes': {folder} holds no fortune file: apt-get install fortunes")
    return files


def fortunes_documents(folder: Path | None = None) -> tuple[list[str], dict[str, Any]]:
    folder = folder or FORTUNES_DIR
    files = fortune_files(folder)
    docs = [p for f in files for fortune in split_fortunes(f.read_text(encoding="utf-8", errors="replace"))
            for p in clean_fortune(fortune)]
    return docs, {"folder": str(folder), "files": [f.name for f in files]}


def builtin_documents(name: str, seed: int) -> tuple[list[str], dict[str, Any]]:
    """A built-in corpus's paragraphs in a seeded order, and the settings that describe them.
    Shuffled so that the first windows taken come from the whole corpus, not its first files."""
    if name == "python-docs":
        docs, settings = python_docs_documents()
    elif name == "fortunes":
        docs, settings = fortunes_documents()
    else:
        raise IEFlowError(f"unknown built-in text corpus {name!r}; built-ins: {', '.join(BUILTIN_TEXT_CORPORA)}")
    docs = list(dict.fromkeys(docs))  # the same quote in two fortune files counts once
    order = np.random.default_rng(seed).permutation(len(docs))
    return [docs[i] for i in order], {"kind": "builtin", "source": name, "seed": seed,
                                      "documents": len(docs), **settings}


def builtin_corpus(name: str, tokenizer: Any, tokens: int, samples: int, seed: int, window: str = "first",
                   other: Any = None) -> Any:
    from ie_flow.corpora.text import window_corpus

    docs, settings = builtin_documents(name, seed)
    return window_corpus(docs, name, name, tokenizer, tokens, samples, window, settings, other)
