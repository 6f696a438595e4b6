"""Corpora: synthetic ICL generators and text readers, cut into N-token windows, with a digest."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ie_flow import IEFlowError
from ie_flow.storage import path_safe

# icl-mixed draws from all 3 x 16 names; icl-mixed-matched from 16 spread over the three (the
# one-category corpora's K, so the same prefix entropy: the comparison claim 1 needs)
ICL_CORPORA = ("icl-countries", "icl-animals", "icl-colours", "icl-mixed", "icl-mixed-matched", "icl-coherence")
# corpora whose sequences carry a per-sequence label of their own (the target measures read it)
LABELLED_CORPORA = ("icl-coherence",)


def corpus_family(name: str) -> str:
    """"icl" for the synthetic in-context corpora, "text" for every other corpus (the built-in text
    corpora, a file or URI, generated text): what an estimator may fix in advance per family
    (Estimator.family_settings)."""
    return "icl" if name in ICL_CORPORA else "text"


@dataclass
class Corpus:
    """N-token windows ready for a model: row i is sample_id i."""

    name: str  # short, path-safe dataset name
    input_ids: np.ndarray  # (n, N) int64
    settings: dict[str, Any]  # everything that produced the ids (recorded in manifests / MLflow)
    # a per-sequence target (docs/METHOD.md section 8) and the groups a probe's splits must keep whole
    labels: np.ndarray | None = None
    groups: np.ndarray | None = None
    # the exact I(s; prefix_t) in bits per token position, where the corpus knows it (icl-coherence)
    target_ceilings: list[float] | None = None
    # the exact I(s; x_t) of token t on its own, where the corpus knows it (icl-coherence: 0)
    token_ceilings: list[float] | None = None
    # what each label value means (class index -> name), e.g. a JSONL label field's values
    label_names: list[str] | None = None
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        if self.input_ids.ndim != 2 or len(self.input_ids) == 0:
            raise IEFlowError(f"corpus {self.name!r} produced no sequence")
        for what, a in (("labels", self.labels), ("groups", self.groups)):
            if a is not None and a.shape != (len(self.input_ids),):
                raise IEFlowError(f"corpus {self.name!r}: {what} must have one entry per window, got {a.shape}")
        h = hashlib.sha256(b"ie-flow-corpus-v1\n")
        h.update(json.dumps(self.settings, sort_keys=True).encode())
        h.update(np.ascontiguousarray(self.input_ids, dtype=np.int64).tobytes())
        h.update(str(self.input_ids.shape).encode())
        if self.labels is not None:  # unlabelled corpora keep the digests they always had
            h.update(b"labels\n" + np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        self.digest = h.hexdigest()

    @property
    def num_samples(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def dataset_id(self) -> str:
        return f"{self.name}-{self.digest[:8]}"

    def prefix_entropy_bits(self) -> list[float]:
        """Plug-in entropy (bits) of the distinct prefixes x_1..x_t at each position t: for a
        deterministic model this caps M_l(t), so IE has to be read next to it (docs/METHOD.md section 6)."""
        out = []
        for t in range(self.num_tokens):
            _, counts = np.unique(self.input_ids[:, : t + 1], axis=0, return_counts=True)
            p = counts / counts.sum()
            out.append(float(-(p * np.log2(p)).sum()))
        return out

    def describe(self, tokenizer: Any = None, examples: int = 3) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.name,
            "digest": self.digest,
            "dataset_id": self.dataset_id,
            "samples": self.num_samples,
            "tokens": self.num_tokens,
            "settings": self.settings,
            "prefix_entropy_bits": [round(b, 3) for b in self.prefix_entropy_bits()],
        }
        if self.labels is not None:
            from ie_flow.estimators.probe import label_entropy_bits

            counts = np.bincount(self.labels)
            names = self.label_names or [str(i) for i in range(len(counts))]
            info["target"] = {"classes": {names[i]: int(c) for i, c in enumerate(counts)},
                              "entropy_bits": round(label_entropy_bits(self.labels), 4),
                              "groups": int(np.unique(self.groups).size) if self.groups is not None else self.num_samples,
                              "exact_prefix_bits": self.target_ceilings, "exact_token_bits": self.token_ceilings}
        if tokenizer is not None:
            info["examples"] = [tokenizer.decode(row) for row in self.input_ids[:examples]]
        return info


def build_corpus(spec: Any, tokenizer: Any, endpoint_url: str | None = None) -> Corpus:
    """Build the corpus a CorpusSpec names (see `_windows`); with `shuffle_tokens`, the tokens of
    each window permuted (seeded): the shuffled-token control, with the same token multiset."""
    corpus = _windows(spec, tokenizer, endpoint_url)
    if not spec.shuffle_tokens:
        return corpus
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0x5A0FF1E]))
    ids = rng.permuted(corpus.input_ids, axis=1)
    # a window keeps its label; the exact ceilings were the unshuffled prefixes' and no longer hold
    return Corpus(f"{corpus.name}-shuffled", ids, {**corpus.settings, "shuffle_tokens": True},
                  labels=corpus.labels, groups=corpus.groups, label_names=corpus.label_names)


def _windows(spec: Any, tokenizer: Any, endpoint_url: str | None = None) -> Corpus:
    """A built-in ICL generator, a built-in text corpus (python-docs, fortunes) or a text/JSONL/Parquet file."""
    from ie_flow.corpora.builtin import BUILTIN_TEXT_CORPORA, builtin_corpus

    if spec.name == "icl-coherence":
        from ie_flow.corpora.coherence import SHOTS, coherence_corpus

        if spec.shots != SHOTS or spec.tokens not in (None, 2 * SHOTS):
            raise IEFlowError(f"icl-coherence has {SHOTS} shots ({2 * SHOTS} tokens) by construction: "
                              "leave --shots and --tokens unset")
        return coherence_corpus(tokenizer, spec.samples, spec.seed, spec.names)
    if spec.name in ICL_CORPORA:
        from ie_flow.corpora.icl import icl_corpus

        return icl_corpus(spec.name.removeprefix("icl-"), tokenizer, spec.shots, spec.samples, spec.seed, spec.names)
    tokens = spec.tokens or 8
    other = _other_tokenizer(spec.same_text_as)
    if spec.name in BUILTIN_TEXT_CORPORA:
        corpus = builtin_corpus(spec.name, tokenizer, tokens, spec.samples, spec.seed, spec.window, other)
    else:
        check_corpus_name(spec.name)
        from ie_flow.corpora.text import text_corpus

        corpus = text_corpus(spec.name, tokenizer, tokens=tokens, samples=spec.samples, text_field=spec.text_field,
                             window=spec.window, endpoint_url=endpoint_url, other=other, label_field=spec.label_field)
    if spec.same_text_as:  # a different selection of sentences: its own dataset id
        corpus = Corpus(f"{corpus.name}-as-{path_safe(spec.same_text_as)}", corpus.input_ids,
                        {**corpus.settings, "same_text_as": spec.same_text_as}, labels=corpus.labels,
                        groups=corpus.groups, label_names=corpus.label_names)
    return corpus


def _other_tokenizer(name: str | None) -> Any:
    if not name:
        return None
    from ie_flow.models import load_tokenizer

    return load_tokenizer(name)


def check_corpus_name(name: str) -> None:
    """A name that is no built-in, no URI and no local path: one line naming the built-ins (and
    the one that was probably meant) instead of a file-not-found error."""
    from difflib import get_close_matches

    from ie_flow.corpora.builtin import BUILTIN_TEXT_CORPORA
    from ie_flow.corpora.text import TEXT_SUFFIXES

    builtins = (*ICL_CORPORA, *BUILTIN_TEXT_CORPORA)
    looks_like_path = "/" in name or name.endswith(TEXT_SUFFIXES) or os.path.exists(name)
    if name in builtins or (looks_like_path and not name.startswith("icl-")):
        return  # the reader says "not found" for a missing path
    close = get_close_matches(name, builtins, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    kind = "built-in corpus" if name.startswith("icl-") else "corpus"
    raise IEFlowError(f"unknown {kind} {name!r}{hint}: not a built-in ({', '.join(builtins)}), file or folder")


def corpus_documents(name: str, text_field: str = "text", seed: int = 0,
                     endpoint_url: str | None = None) -> Iterator[str]:
    """The documents (paragraphs) of a built-in text corpus, in its seeded order, or of a file."""
    from ie_flow.corpora.builtin import BUILTIN_TEXT_CORPORA, builtin_documents
    from ie_flow.corpora.text import read_documents

    if name in BUILTIN_TEXT_CORPORA:
        yield from builtin_documents(name, seed)[0]
        return
    if name in ICL_CORPORA:
        raise IEFlowError(f"{name!r} is a synthetic ICL corpus, not text: use python-docs, fortunes or a file")
    check_corpus_name(name)
    yield from read_documents(name, text_field, endpoint_url)
