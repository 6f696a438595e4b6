"""`corpus generate`: model-written text from human prompts, its metadata line, resume without
duplicates, and the same windowing for the human and the model side (tiny model, in-process)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ie_flow import IEFlowError
from ie_flow.corpora.generate import (
    GENERATION_META_KEY, GenerateText, batch_order, GenerationSettings, generate_corpus, prompt_digest, select_prompts,
)
from ie_flow.corpora.text import text_corpus
from ie_flow.hardware import cpu_has_native_bfloat16

DOCS = [
    "the cat sat on the mat. a cat is on a mat.",
    "a cat sat on a mat and the cat is the cat. the mat is a mat.",
    "the mat is on the cat. the cat sat. a mat sat on a cat.",
    "a mat and a cat sat on the mat. the cat is a cat and a mat.",
    "the cat is on the mat and the mat. a cat sat.",
    "the mat sat on the mat and a cat. a cat is on the cat. the end is a mat.",
    "cat",  # no opening of five words and no second sentence: never a prompt
    "the cat sat on a mat",
]


@pytest.fixture
def human(tmp_path):
    path = tmp_path / "human.jsonl"
    path.write_text("".join(json.dumps({"body": d}) + "\n" for d in DOCS))
    return path


@pytest.fixture
def settings(tiny_llama, human):
    return GenerationSettings(model=str(tiny_llama), prompts=str(human), text_field="body", samples=5,
                              batch_size=2, max_new_tokens=6, seed=3)


def _lines(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


def test_prompts_are_seeded_openings_with_their_human_rest(settings):
    prompts = select_prompts(settings)
    assert [p.id for p in prompts] == list(range(5))
    eligible = {d.split(". ", 1)[0] + ".": d.split(". ", 1)[1] for d in DOCS[:6]}
    for p in prompts:
        assert eligible[p.text] == p.human  # opening sentence + the rest, exactly as written
    assert len({p.text for p in prompts}) == 5
    assert select_prompts(settings) == prompts  # same seed, same prompts
    # seeded reservoir sampling: which 3 of the 6 eligible documents each seed draws (pinned)
    drawn = {seed: [DOCS.index(f"{p.text} {p.human}") for p in select_prompts(replace(settings, samples=3, seed=seed))]
             for seed in (0, 2, 3)}
    assert drawn == {0: [0, 1, 2], 2: [5, 4, 2], 3: [4, 5, 2]}


def test_generate_writes_metadata_then_one_record_per_prompt(settings, tmp_path, one_torch_thread):
    out = tmp_path / "model.jsonl"
    result = generate_corpus(settings, str(out))
    meta, *records = _lines(out)
    prompts = select_prompts(settings)
    info = meta[GENERATION_META_KEY]
    assert info["settings"]["model"] == settings.model and info["settings"]["max_new_tokens"] == 6
    assert info["settings"]["dtype"] == ("bfloat16" if cpu_has_native_bfloat16() else "float32")  # auto, resolved
    assert info["prompt_digest"] == prompt_digest(prompts) and info["prompts"] == 5
    assert [r["id"] for r in records] == [0, 1, 2, 3, 4]
    assert [(r["prompt"], r["human"]) for r in records] == [(p.text, p.human) for p in prompts]
    # the tiny model has no EOS: every prompt gets all 6 new tokens
    assert result.records == 5 and result.batches_generated == 3 and result.new_tokens == 30
    assert not (tmp_path / "model.jsonl.parts").exists()
    # the same batch generated directly gives the same text (seeded per batch; batched by opening length)
    order = batch_order(prompts)
    assert [len(prompts[i].text) for i in order] == sorted(len(p.text) for p in prompts)
    step = GenerateText(info["settings"], [prompts[i].text for i in order])
    step.setup()
    assert step.generate_batch(1) == ([records[order[2]]["text"], records[order[3]]["text"]], 12)
    tok = step.loaded.tokenizer
    for r in records:  # no chat template: the raw opening was continued with words of the vocabulary
        assert r["text"] and tok.unk_token_id not in tok(r["text"], add_special_tokens=False).input_ids
    # both sides are cut into windows by the same reader, which skips the metadata line
    model_side = text_corpus(str(out), step.loaded.tokenizer, tokens=2, samples=100)
    human_side = text_corpus(str(out), step.loaded.tokenizer, tokens=2, samples=100, text_field="human")
    assert model_side.settings["text_field"] == "text" and human_side.num_samples >= 5


def test_interrupted_generation_resumes_without_duplicates(settings, tmp_path, monkeypatch, one_torch_thread):
    reference = tmp_path / "reference.jsonl"
    generate_corpus(settings, str(reference))
    real_run = GenerateText.run

    def dies_at_batch_2(self, units):
        if units[0].payload["batch"] == 2:
            raise KeyboardInterrupt
        return real_run(self, units)

    out = tmp_path / "model.jsonl"
    monkeypatch.setattr(GenerateText, "run", dies_at_batch_2)
    with pytest.raises(KeyboardInterrupt):
        generate_corpus(settings, str(out))
    assert not out.exists() and len(list((tmp_path / "model.jsonl.parts" / "_done").iterdir())) == 2
    monkeypatch.setattr(GenerateText, "run", real_run)
    resumed = generate_corpus(settings, str(out))
    assert resumed.batches_generated == 1  # only the batch that was not finished
    assert out.read_bytes() == reference.read_bytes()
    again = generate_corpus(settings, str(out))  # complete already: nothing to do
    assert again.batches_generated == 0 and out.read_bytes() == reference.read_bytes()


def test_other_settings_never_mix_with_existing_output(settings, tmp_path, one_torch_thread):
    out = tmp_path / "model.jsonl"
    generate_corpus(settings, str(out))
    other = replace(settings, max_new_tokens=3)
    with pytest.raises(IEFlowError, match="not generated with these settings.*--force"):
        generate_corpus(other, str(out))
    generate_corpus(other, str(out), force=True)
    assert _lines(out)[0][GENERATION_META_KEY]["settings"]["max_new_tokens"] == 3


@pytest.mark.parametrize(
    "change, message",
    [
        ({"samples": 7}, "has 6 documents with an opening sentence"),
        ({"prompts": "fortune"}, "did you mean 'fortunes'"),
        ({"prompts": "icl-animals"}, "synthetic ICL corpus, not text"),
        ({"prompts": "missing.jsonl"}, "corpus not found"),
    ],
)
def test_bad_prompt_corpora_say_what_is_wrong(settings, change, message):
    with pytest.raises(IEFlowError, match=message):
        select_prompts(replace(settings, **change))


@pytest.mark.parametrize("change, message", [({"task": "chat"}, "unknown task 'chat'"),
                                             ({"batch_size": 0}, "batch_size must be at least 1"),
                                             ({"top_p": 1.5}, "0 < top_p <= 1"),
                                             ({"dtype": "fp8"}, "unknown dtype 'fp8'")])
def test_bad_settings(change, message):
    with pytest.raises(IEFlowError, match=message):
        GenerationSettings(**change)


def test_cli_generate_then_describe_both_sides(ie_flow, settings, tmp_path, one_torch_thread):
    out = tmp_path / "gen.jsonl"
    common = ["--prompts", settings.prompts, "--text-field", "body", "--model", settings.model]
    res = ie_flow("corpus", "generate", "--out", out, *common, "--samples", 3, "--batch-size", 2,
                  "--max-new-tokens", 4, "--json")
    assert res.code == 0, res.err
    summary = json.loads(res.out)
    assert summary["records"] == 3 and summary["batches_generated"] == 2 and summary["new_tokens"] == 12
    assert summary["settings"]["samples"] == 3 and summary["settings"]["temperature"] == 0.7  # the default
    assert len(_lines(out)) == 4
    for field in ("text", "human"):  # the same windowing over the model's and the human side
        res = ie_flow("corpus", "--corpus", out, "--text-field", field, "--model", settings.model, "--tokens", 2,
                      "--samples", 200, "--json")
        assert res.code == 0, res.err
        info = json.loads(res.out)
        assert info["settings"]["text_field"] == field and info["samples"] >= 3


@pytest.mark.parametrize("args, needle", [(["--prompts", "fortune"], "did you mean 'fortunes'"),
                                          (["--samples", "50"], "50 prompts were asked for"),
                                          (["--task", "chat"], "unknown task 'chat'")])
def test_cli_generate_bad_input_is_one_line_exit_2(ie_flow, settings, tmp_path, args, needle):
    base = {"--prompts": settings.prompts, "--text-field": "body", "--model": settings.model}
    base.update(dict(zip(args[::2], args[1::2])))
    res = ie_flow("corpus", "generate", "--out", tmp_path / "x.jsonl", *[a for kv in base.items() for a in kv])
    assert res.code == 2 and len(res.error_lines) == 1 and needle in res.error_lines[0], res.err
    assert not (tmp_path / "x.jsonl").exists()
