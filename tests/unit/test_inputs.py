"""A job's own inputs on its storage (`ie-flow submit`): uploaded once to a content-addressed folder,
named there by the submitted spec, fetched back into the cache only if every sha256 matches."""

from __future__ import annotations

import json
import logging

import pytest

SENTENCES = ["the cat sat on the mat and the cat is on a mat .", "a cat is on the mat and the mat is a cat ."]


def _corpus_file(tmp_path):
    path = tmp_path / "my-corpus.jsonl"
    path.write_text("".join(json.dumps({"text": SENTENCES[i % 2]}) + "\n" for i in range(300)))
    return path


def test_upload_is_content_addressed_and_done_once(tmp_path, caplog, monkeypatch):
    from ie_flow.inputs import upload_input
    from ie_flow.provenance import files_digest, file_sha256
    from ie_flow.storage import Storage

    monkeypatch.setenv("IE_FLOW_CACHE", str(tmp_path / "cache"))
    corpus = _corpus_file(tmp_path)
    root = Storage(str(tmp_path / "shared"))
    uri = upload_input(root, corpus)
    digest = files_digest({"my-corpus.jsonl": file_sha256(corpus)})
    assert uri == str(tmp_path / "shared" / "inputs" / f"sha256-{digest}" / "my-corpus.jsonl")
    assert open(uri, "rb").read() == corpus.read_bytes()
    record = json.loads((tmp_path / "shared" / "inputs" / f"sha256-{digest}" / "_sha256.json").read_text())
    assert record["files"] == {"my-corpus.jsonl": {"sha256": file_sha256(corpus), "bytes": corpus.stat().st_size}}
    stamp = (tmp_path / "shared" / "inputs" / f"sha256-{digest}" / "my-corpus.jsonl").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="ie_flow"):
        assert upload_input(root, corpus) == uri
    assert "already on storage" in caplog.text
    assert (tmp_path / "shared" / "inputs" / f"sha256-{digest}" / "my-corpus.jsonl").stat().st_mtime_ns == stamp
    corpus.write_text(corpus.read_text() + json.dumps({"text": "the end ."}) + "\n")
    assert upload_input(root, corpus) != uri  # other content, other address


def test_fetched_model_is_the_uploaded_bytes_and_a_damaged_copy_is_refused(tiny_llama, tmp_path, monkeypatch):
    from ie_flow import IEFlowError
    from ie_flow.inputs import upload_input
    from ie_flow.model_fetch import fetch_model
    from ie_flow.storage import Storage

    monkeypatch.setenv("IE_FLOW_CACHE", str(tmp_path / "cache"))
    uri = upload_input(Storage(str(tmp_path / "shared")), tiny_llama)
    local = fetch_model(uri)
    assert local.name == tiny_llama.name and str(local).startswith(str(tmp_path / "cache" / "inputs"))
    names = sorted(p.name for p in tiny_llama.iterdir())
    assert sorted(p.name for p in local.iterdir()) == names
    assert all((local / n).read_bytes() == (tiny_llama / n).read_bytes() for n in names)
    weights = f"{uri}/model.safetensors"
    data = bytearray(open(weights, "rb").read())
    data[-1] ^= 0xFF
    open(weights, "wb").write(bytes(data))
    monkeypatch.setenv("IE_FLOW_CACHE", str(tmp_path / "other-cache"))  # a node that has no copy yet
    with pytest.raises(IEFlowError, match=r"model.safetensors has sha256 [0-9a-f]{12}\.\.\., its record says"):
        fetch_model(uri)
    assert not (tmp_path / "other-cache" / "inputs").exists() or not list(
        (tmp_path / "other-cache" / "inputs").rglob("model.safetensors"))


def test_carried_job_reads_the_same_corpus_and_model_from_storage(tiny_llama, tmp_path, monkeypatch):
    from ie_flow.config import load_job
    from ie_flow.corpora import build_corpus
    from ie_flow.inputs import carry_inputs, local_inputs
    from ie_flow.models import load_tokenizer, model_identity, resolve_model

    monkeypatch.setenv("IE_FLOW_CACHE", str(tmp_path / "cache"))
    corpus = _corpus_file(tmp_path)
    job = load_job(overrides={"model.name": f"random:{tiny_llama}", "corpus.name": str(corpus),
                              "corpus.samples": 256, "storage.uri": str(tmp_path / "shared")})
    inputs = local_inputs(job)
    assert inputs == {"corpus.name": corpus, "model.name": tiny_llama}
    carried = carry_inputs(job, inputs)
    inputs_root = str(tmp_path / "shared" / "inputs" / "sha256-")
    assert carried.corpus.name.startswith(inputs_root) and carried.corpus.name.endswith("/my-corpus.jsonl")
    assert carried.model.name.startswith("random:" + inputs_root) and carried.model.name.endswith("/tiny-llama")
    assert carried.model_dump(exclude={"corpus": {"name"}, "model": {"name"}}) == \
        job.model_dump(exclude={"corpus": {"name"}, "model": {"name"}})
    tok = load_tokenizer(str(tiny_llama))
    here, there = build_corpus(job.corpus, tok), build_corpus(carried.corpus, tok)
    assert (here.input_ids == there.input_ids).all() and here.num_samples == 256
    uploaded = resolve_model(carried.model.name.removeprefix("random:"))
    assert model_identity(uploaded) == model_identity(resolve_model(str(tiny_llama)))


def test_submit_with_a_corpus_path_that_does_not_exist(ie_flow, tmp_path):
    """Refused on this machine, before the Ray Jobs API (nothing listens at the address) or S3."""
    ie_flow("submit", "--corpus", tmp_path / "missing.jsonl", "--storage", "s3://bucket/x", "--tracking-uri",
            "http://127.0.0.1:5000", "--ray-address", "http://127.0.0.1:1").assert_one_error(
        f"corpus not found: {tmp_path / 'missing.jsonl'}")
