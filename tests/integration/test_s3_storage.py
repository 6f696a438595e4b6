"""Stage 1 against a real S3-protocol server (moto's server mode, its own process): the corpus is
read from s3://, activations are written to s3:// and read back equal to a direct model call;
the manifest's per-shard sha256 match the bytes in the bucket; no credential is ever written.
An unreachable endpoint is a quick, one-line, exit-2 error that leaves no manifest behind."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

WORDS = ["the", "a", "cat", "sat", "on", "mat", "is", "and", "France", "Spain", "Italy", "Egypt", "China",
         "India", "Japan", "Germany", "Canada", "Brazil"]
TOKENS = 4
LINES = 300
SAMPLES = 256  # < LINES: the reader stops early
BATCH = 32
SHARD = 100  # 3 shards (100, 100, 56 sequences)


def _corpus_lines() -> list[str]:
    """One sentence per JSONL record, 5-9 words from the tiny tokenizer's vocabulary."""
    rng = np.random.default_rng(7)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 10)))) + "." for _ in range(LINES)]


@pytest.fixture(scope="module")
def s3_corpus(s3_server) -> tuple[str, list[str]]:
    lines = _corpus_lines()
    body = "".join(json.dumps({"id": i, "body": s}) + "\n" for i, s in enumerate(lines)).encode()
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="corpora/sentences.jsonl", Body=body)
    return f"s3://{s3_server.bucket}/corpora/sentences.jsonl", lines


def _expected_ids(tokenizer, lines: list[str]) -> np.ndarray:
    """The first TOKENS tokens of each sentence, computed here without ie-flow's corpus code."""
    rows = []
    for line in lines:
        ids = tokenizer(line, add_special_tokens=False).input_ids
        assert len(ids) >= TOKENS
        rows.append(ids[:TOKENS])
        if len(rows) == SAMPLES:
            break
    return np.array(rows, dtype=np.int64)


# float32 through `ie-flow extract` (stage 1 alone); float16 through `ie-flow run` (stage 2 then
# reads the activations back from S3 and writes its results and summary there)
@pytest.mark.parametrize("storage_dtype,command", [("float32", "extract"), ("float16", "run")])
def test_corpus_and_activations_on_s3_equal_direct_model_call(storage_dtype, command, s3_credentials, s3_corpus,
                                                              tiny_llama, cli, base_env, tmp_path):
    from ie_flow.config import CorpusSpec
    from ie_flow.corpora import build_corpus
    from ie_flow.models import load_model
    from ie_flow.stages.extract import capture_boundaries
    from ie_flow.storage import Storage
    from ie_flow.store import DatasetFolder, Manifest

    s3_server = s3_credentials
    corpus_uri, lines = s3_corpus
    workflow = tmp_path / "job.yaml"
    workflow.write_text(f"extract:\n  shard_size: {SHARD}\n")
    prefix = f"acts-{storage_dtype}"
    env = base_env(**s3_server.credentials)  # the endpoint: --s3-endpoint
    extra = ["--estimator", "gaussian", "--no-tracking"] if command == "run" else []
    res = cli(command, str(workflow), "--model", str(tiny_llama), "--corpus", corpus_uri, "--text-field", "body",
              "--tokens", str(TOKENS), "--samples", str(SAMPLES), "--batch-size", str(BATCH),
              "--storage-dtype", storage_dtype, "--storage", f"s3://{s3_server.bucket}/{prefix}",
              "--s3-endpoint", s3_server.endpoint, *extra, "--json", env=env, timeout=300)
    info = res.json()
    if command == "extract":
        assert info["reused"] is False and info["samples"] == SAMPLES and info["tokens"] == TOKENS
    manifest_uri = info["manifest"]
    assert manifest_uri.startswith(f"s3://{s3_server.bucket}/{prefix}/activations/tiny-llama/")
    assert manifest_uri.endswith("/manifest.json")
    folder_key = manifest_uri[len(f"s3://{s3_server.bucket}/"):-len("/manifest.json")]

    # -- the manifest, as the bucket holds it
    manifest_bytes = s3_server.get(f"{folder_key}/manifest.json")
    manifest = json.loads(manifest_bytes)
    assert manifest["complete"] is True
    assert manifest["storage_dtype"] == storage_dtype
    assert (manifest["samples"], manifest["tokens"], manifest["hidden_size"]) == (SAMPLES, TOKENS, 32)
    assert manifest["num_blocks"] == 2 and manifest["boundaries"] == [0, 1, 2]
    assert manifest["dataset"]["digest"] == info["corpus_digest"]
    assert folder_key.endswith(f"-{info['corpus_digest'][:8]}")
    assert [s["sequences"] for s in manifest["shards"]] == [100, 100, 56]

    # -- per-shard sha256 and sizes match the objects; nothing in the bucket that the manifest omits
    listed = {f"{folder_key}/{rel}" for s in manifest["shards"] for rel in s["files"]}
    in_bucket = {k for k in s3_server.keys(folder_key + "/") if k.endswith(".parquet")}
    assert listed == in_bucket and len(in_bucket) == 3 * 3
    for shard in manifest["shards"]:
        for rel, meta in shard["files"].items():
            data = s3_server.get(f"{folder_key}/{rel}")
            assert hashlib.sha256(data).hexdigest() == meta["sha256"], rel
            assert len(data) == meta["bytes"]
            assert meta["rows"] == shard["sequences"] * TOKENS
    assert sorted(k.rsplit("/", 1)[1] for k in s3_server.keys(f"{folder_key}/_done/")) == \
        ["part-00000", "part-00001", "part-00002"]

    # -- the token ids: the corpus read from S3 is the sentences' first N tokens, in corpus order
    loaded = load_model(str(tiny_llama))
    expected_ids = _expected_ids(loaded.tokenizer, lines)
    corpus = build_corpus(CorpusSpec(name=corpus_uri, tokens=TOKENS, samples=SAMPLES, text_field="body"),
                          loaded.tokenizer, s3_server.endpoint)
    np.testing.assert_array_equal(corpus.input_ids, expected_ids)
    assert corpus.digest == manifest["dataset"]["digest"]

    # -- activations read back through Storage / read_boundary equal a direct capture
    store = Storage(manifest_uri.rsplit("/", 1)[0], s3_server.endpoint)
    folder = DatasetFolder(store)
    direct = capture_boundaries(loaded, expected_ids, BATCH, manifest["boundaries"])
    for b in manifest["boundaries"]:
        got = folder.read_boundary(Manifest.model_validate(manifest), b)
        assert got.shape == (SAMPLES, TOKENS, 32) and got.dtype == np.float32
        if storage_dtype == "float32":
            np.testing.assert_array_equal(got, direct[b], err_msg=f"boundary {b} not bit-exact")
        else:
            np.testing.assert_array_equal(got, direct[b].astype(np.float16).astype(np.float32),
                                          err_msg=f"boundary {b} is not the float16 rounding of the direct call")
        # real activations (not zeros, not one repeated vector): they vary with the tokens
        assert np.abs(direct[b]).max() > 1e-2 and len(np.unique(direct[b][:, -1], axis=0)) > 10
    first = store.read_parquet("boundary=000/part-00001.parquet")
    vec_type = first.schema.field("vec").type
    assert vec_type.list_size == 32 and str(vec_type.value_type) == {"float32": "float", "float16": "halffloat"}[storage_dtype]
    assert str(first.schema.field("sample_id").type) == "int64" and str(first.schema.field("pos").type) == "int16"
    assert first.column("sample_id").to_pylist()[:: TOKENS][:3] == [100, 101, 102]
    assert first.column("pos").to_pylist()[:TOKENS] == list(range(TOKENS))

    # -- no credential anywhere in what ie-flow wrote, nor in its output
    for key in s3_server.keys(folder_key + "/"):
        if not key.endswith(".parquet"):
            text = s3_server.get(key).decode()
            assert s3_server.key_id not in text and s3_server.secret not in text, key
    assert s3_server.key_id not in res.stderr + res.stdout and s3_server.secret not in res.stderr + res.stdout

    if command == "run":
        # stage 2 read the activations back from S3; results and summary are there, credential-free too
        assert info["results"].startswith(f"s3://{s3_server.bucket}/{prefix}/results/tiny-llama/")
        results_key = info["results"][len(f"s3://{s3_server.bucket}/"):-len("/mi.parquet")]
        assert f"{results_key}/mi.parquet" in s3_server.keys(results_key + "/")
        summary_text = s3_server.get(f"{results_key}/summary.json").decode()
        summary = json.loads(summary_text)
        assert summary["manifest_uri"] == manifest_uri and summary["job"]["storage"]["endpoint_url"]
        assert [l["layer"] for l in info["layers"]] == [0, 1]
        assert [l["ie"] for l in summary["layers"]] == [l["ie"] for l in info["layers"]]
        assert s3_server.key_id not in summary_text and s3_server.secret not in summary_text


def _unreachable_extract(cli, env, tiny_llama: Path, storage: str, corpus: str, endpoint: str):
    t0 = time.monotonic()
    res = cli("extract", "--model", str(tiny_llama), "--corpus", corpus, "--tokens", str(TOKENS),
              "--samples", str(SAMPLES), "--storage", storage, "--s3-endpoint", endpoint, env=env, timeout=120)
    return res, time.monotonic() - t0


def test_unreachable_s3_endpoint_is_a_quick_clear_error(cli, tiny_llama, free_port, base_env, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = base_env(AWS_ACCESS_KEY_ID="AKIAIEFLOWTEST000001", AWS_SECRET_ACCESS_KEY="dummy", AWS_DEFAULT_REGION="us-east-1")

    # activations to an unreachable S3 store
    res, seconds = _unreachable_extract(cli, env, tiny_llama, "s3://ie-flow-it/acts-down", "icl-countries", closed)
    assert res.returncode == 2, res.describe()
    assert seconds < 60, f"took {seconds:.0f} s to give up\n{res.describe()}"
    assert len(res.error_lines()) == 1, res.describe()
    line = res.error_lines()[0]
    assert "s3://ie-flow-it/acts-down" in line and "not writable" in line, line
    assert "Traceback" not in res.stderr and res.stdout.strip() == ""

    # a corpus on an unreachable S3 endpoint, activations to a local folder: nothing written that
    # claims to be complete
    local = tmp_path / "store"
    res, seconds = _unreachable_extract(cli, env, tiny_llama, str(local), "s3://ie-flow-it/corpora/sentences.jsonl",
                                        closed)
    assert res.returncode == 2, res.describe()
    assert seconds < 60, f"took {seconds:.0f} s to give up\n{res.describe()}"
    assert len(res.error_lines()) == 1, res.describe()
    line = res.error_lines()[0]
    assert "s3://ie-flow-it/corpora/sentences.jsonl" in line, line
    assert "Traceback" not in res.stderr
    assert not list(local.rglob("manifest.json")) and not list(local.rglob("_done"))


def test_model_on_s3_is_fetched_verified_and_a_damaged_copy_refused(cli, tiny_llama, s3_credentials, base_env,
                                                                    tmp_path):
    """`--model s3://...` (a folder `ie-flow submit` uploaded): fetched into the cache, every file
    checked against its recorded sha256; the same activations as the local folder. A damaged copy:
    one `error:` line, exit 2, before any work."""
    from ie_flow.inputs import upload_input
    from ie_flow.storage import Storage

    s3 = s3_credentials
    uri = upload_input(Storage(f"s3://{s3.bucket}/model-inputs", s3.endpoint), tiny_llama)
    assert uri.startswith(f"s3://{s3.bucket}/model-inputs/inputs/sha256-") and uri.endswith("/tiny-llama")

    def extract(model: str, storage: Path, cache: Path):
        return cli("extract", "--model", model, "--samples", "128", "--executor", "serial", "--storage", str(storage),
                   "--s3-endpoint", s3.endpoint, "--json", env=base_env(**s3.credentials, IE_FLOW_CACHE=str(cache)),
                   timeout=180)

    fetched, here = extract(uri, tmp_path / "fetched", tmp_path / "cache"), extract(str(tiny_llama), tmp_path / "here",
                                                                                 tmp_path / "cache")
    a, b = (json.loads(Path(r.json()["manifest"]).read_text()) for r in (fetched, here))
    assert a["model"]["name"] == uri and a["model"]["key"] == "tiny-llama"
    assert a["model"]["location"].startswith(str(tmp_path / "cache" / "inputs" / "sha256-"))
    assert a["model"]["fingerprint"] == b["model"]["fingerprint"] and a["shards"] == b["shards"]

    key = f"{uri[len(f's3://{s3.bucket}/'):]}/model.safetensors"
    body = bytearray(s3.get(key))
    body[len(body) // 2] ^= 0xFF
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=bytes(body))
    bad = extract(uri, tmp_path / "bad", tmp_path / "fresh-cache")  # a node without a verified copy
    assert bad.returncode == 2, bad.describe()
    assert len(bad.error_lines()) == 1 and "model.safetensors has sha256" in bad.error_lines()[0], bad.describe()
    assert "its record says" in bad.error_lines()[0] and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").rglob("_done"))
