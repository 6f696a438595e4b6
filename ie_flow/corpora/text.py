"""Text corpora (plain text, JSONL, Parquet; local or s3://) cut into N-token windows inside one
sentence, skipping windows that contain `: ? - ;` or a newline (docs/METHOD.md section 3.2)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ie_flow import IEFlowError, first_line

SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
FORBIDDEN_IN_WINDOW = re.compile(r"[:?\-;\n]")
TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
# key of the metadata record on the first line of a generated JSONL corpus (corpora/generate.py)
GENERATION_META_KEY = "ie_flow_generation"


def _files(uri: str, endpoint_url: str | None) -> tuple[Any, list[str]]:
    from ie_flow.storage import filesystem_for

    fs, path = filesystem_for(uri, endpoint_url)
    try:
        if fs.isdir(path):
            files = sorted(p for p in fs.find(path) if p.endswith(TEXT_SUFFIXES))
            if not files:
                raise IEFlowError(f"corpus folder {uri} holds no {', '.join(TEXT_SUFFIXES)} file")
            return fs, files
        if not fs.exists(path):
            raise IEFlowError(f"corpus not found: {uri} (not a built-in name, file or folder)")
    except IEFlowError:
        raise
    except Exception as e:  # noqa: BLE001 - network and permission errors from any backend
        reason = first_line(e)
        raise IEFlowError(f"cannot read corpus {uri}: {reason}") from None
    return fs, [path]


def _decode(raw: bytes, where: str) -> str:
    if b"\x00" in raw:
        raise IEFlowError(f"{where} contains NUL bytes: binary data, not a text corpus")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise IEFlowError(f"{where} is not valid UTF-8 (byte {e.start}): {e.reason}") from None


def _parquet_documents(fs: Any, path: str, name: str, text_field: str, label_field: str | None = None
                       ) -> Iterator[Any]:
    """The text column of a Parquet file (with `label_field`: (text, label) pairs); a file that is
    not Parquet, or whose column holds no text, is refused with one line (not pyarrow's exception,
    after the work started)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            schema = pf.schema_arrow
            if text_field not in schema.names:
                raise IEFlowError(f"{name} has no column {text_field!r} (columns: {', '.join(schema.names)}); "
                                  "set --text-field")
            kind = schema.field(text_field).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise IEFlowError(f"{name} column {text_field!r} holds {kind}, not text; set --text-field")
            if label_field is not None and label_field not in schema.names:
                raise IEFlowError(f"{name} has no column {label_field!r} for --label-field "
                                  f"(columns: {', '.join(schema.names)})")
            columns = [text_field] + ([label_field] if label_field is not None else [])
            for batch in pf.iter_batches(columns=columns):
                texts = batch.column(0).to_pylist()
                if label_field is None:
                    yield from (t for t in texts if t)
                    continue
                for t, label in zip(texts, batch.column(1).to_pylist()):
                    if t and label is None:
                        raise IEFlowError(f"{name}: a row has no {label_field!r} label (null); every "
                                          "document needs one")
                    if t:
                        yield t, label
    except (pa.ArrowException, OSError) as e:  # not Parquet, or a damaged file
        raise IEFlowError(f"{name} is not a valid Parquet file: {first_line(e)}") from None


def read_documents(uri: str, text_field: str = "text", endpoint_url: str | None = None,
                   label_field: str | None = None) -> Iterator[Any]:
    """Yield documents one at a time (streaming: a large corpus is never held whole); with
    `label_field` (JSONL and Parquet), (text, label) pairs: every document must have its label."""
    fs, files = _files(uri, endpoint_url)
    for path in files:
        name = os.path.basename(path)
        if path.endswith(".parquet"):
            yield from _parquet_documents(fs, path, name, text_field, label_field)
            continue
        if label_field is not None and not path.endswith((".jsonl", ".json")):
            raise IEFlowError(f"{name} is plain text: a per-sequence label (--label-field) needs a JSONL or "
                              "Parquet corpus")
        jsonl = path.endswith((".jsonl", ".json"))
        with fs.open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                line = _decode(raw, f"{name} line {lineno}").rstrip("\r\n")
                if not line.strip():
                    continue
                if not jsonl:
                    yield line
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise IEFlowError(f"{name} line {lineno} is not JSON: {e.msg}") from None
                if lineno == 1 and isinstance(record, dict) and GENERATION_META_KEY in record:
                    continue  # how the file was generated, not a document
                if not isinstance(record, dict) or text_field not in record:
                    keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                    raise IEFlowError(
                        f"{name} line {lineno} has no field {text_field!r} (has: {keys}); set --text-field"
                    )
                if label_field is not None and record.get(label_field) is None:
                    raise IEFlowError(f"{name} line {lineno} has no {label_field!r} label (has: {', '.join(record)}); "
                                      "every document needs one")
                if isinstance(record[text_field], str):
                    yield record[text_field] if label_field is None else (record[text_field], record[label_field])


def sentences(document: str) -> Iterator[str]:
    for s in SENTENCE_END.split(document):
        s = s.strip()
        if s:
            yield s


def sentence_window(ids: list[int], tokens: int, window: str) -> list[int] | None:
    if len(ids) < tokens:
        return None
    return ids[:tokens] if window == "first" else ids[-tokens:]


def same_window_text(sentence: str, window_text: str, other: Any, tokens: int, window: str) -> bool:
    """Whether `other` (a second model's tokenizer) cuts the same window text from the sentence."""
    ids = sentence_window(other(sentence, add_special_tokens=False).input_ids, tokens, window)
    return ids is not None and other.decode(ids).strip() == window_text.strip()


def window_corpus(
    documents: Iterable[str], source: str, name: str, tokenizer: Any, tokens: int, samples: int, window: str,
    settings: dict[str, Any], other: Any = None,
) -> "Corpus":
    """Up to `samples` windows, one per sentence, in document order. Every text corpus is cut here
    (files, built-in corpora, model-written text), so two corpora differ only in their text. With
    `other` (a second tokenizer), only sentences whose window is the same text under both. Documents
    given as (text, label) pairs label their windows, and a document is its windows' group (a
    probe's splits never share a document)."""
    from ie_flow.corpora import Corpus

    rows: list[list[int]] = []
    labels: list[Any] = []
    groups: list[int] = []
    documents_seen = sentences_seen = 0
    for doc in documents:
        documents_seen += 1
        doc, label = doc if isinstance(doc, tuple) else (doc, None)
        for sentence in sentences(doc):
            sentences_seen += 1
            ids = sentence_window(tokenizer(sentence, add_special_tokens=False).input_ids, tokens, window)
            if ids is None or FORBIDDEN_IN_WINDOW.search(text := tokenizer.decode(ids)):
                continue
            if other is not None and not same_window_text(sentence, text, other, tokens, window):
                continue
            rows.append(ids)
            labels.append(label)
            groups.append(documents_seen - 1)
            if len(rows) == samples:
                break
        if len(rows) == samples:
            break
    if documents_seen == 0:
        raise IEFlowError(f"corpus {source} is empty (no non-blank document)")
    if not rows:
        raise IEFlowError(
            f"no sentence in {source} gives a {tokens}-token window without ': ? - ;' "
            f"({documents_seen} documents, {sentences_seen} sentences read); try fewer --tokens"
        )
    settings = {**settings, "tokens": tokens, "window": window, "samples_requested": samples, "samples": len(rows)}
    if labels[0] is None:
        return Corpus(f"{name}-{tokens}tok", np.array(rows, dtype=np.int64), settings)
    names = sorted({str(v) for v in labels})  # class index = rank of the label's text
    index = {v: i for i, v in enumerate(names)}
    return Corpus(f"{name}-{tokens}tok", np.array(rows, dtype=np.int64), settings,
                  labels=np.array([index[str(v)] for v in labels], dtype=np.int64),
                  groups=np.array(groups, dtype=np.int64), label_names=names)


def text_corpus(
    uri: str, tokenizer: Any, tokens: int, samples: int, text_field: str = "text", window: str = "first",
    endpoint_url: str | None = None, other: Any = None, label_field: str | None = None,
) -> "Corpus":
    """Windows of a text/JSONL/Parquet corpus in corpus order (deterministic: same file, same ids);
    with `label_field`, each window labelled with its document's label."""
    from ie_flow.storage import path_safe

    base = path_safe(os.path.splitext(os.path.basename(uri.rstrip("/")))[0])
    settings = {"kind": "text", "source": uri, "text_field": text_field}
    if label_field is not None:  # unlabelled corpora keep the settings (and digests) they always had
        settings["label_field"] = label_field
    return window_corpus(read_documents(uri, text_field, endpoint_url, label_field), uri, base, tokenizer, tokens,
                         samples, window, settings, other)
