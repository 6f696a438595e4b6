"""Model-written text for the human-vs-model comparison (docs/METHOD.md section 3): an instruct
model continues (or answers) the opening sentence of documents drawn from a human corpus.

Output: one JSONL file. Line 1 is a metadata record {"ie_flow_generation": {...}} (model,
settings, prompt digest; the text reader skips it); every other line is one prompt:
{"id", "text": model-written, "human": the rest of the human document, "prompt"}. Windows cut
with `--text-field text` and `--text-field human` then differ only in who wrote the text.

Each batch of prompts is one unit of work for an executor, like a stage 1 shard: its texts
go into its completion record (OUT.parts/_done/batch-NNNNN) when it finishes, and the file is
written from those records, in prompt order, once all are done. An interrupted run keeps its
finished batches, so a rerun generates only the others and nothing is duplicated. In-process
(serial executor) by default; on Ray workers with --executor ray or --ray-address."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ie_flow import IEFlowError, __version__
from ie_flow.corpora.text import GENERATION_META_KEY, sentences

log = logging.getLogger("ie_flow")

PROMPT_TEMPLATES = {
    # an instruct model writes its own continuation of a human opening
    "continue": "Continue the following text with a few sentences of your own:\n\n{text}",
    # the opening itself is the message (corpora of questions or requests)
    "answer": "{text}",
}
MIN_PROMPT_WORDS = 5
GENERATION_DTYPES = ("auto", "float32", "bfloat16", "float16")
SAMPLER = "ie_flow.corpora.sampling, batches by opening length"  # in the metadata: what drew the text
PARTS_META = "generation.json"  # in OUT.parts/: the settings its finished batches were made with


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that decides the generated text (recorded in the file's metadata line)."""

    model: str = "smollm2-135m"
    prompts: str = "fortunes"  # human corpus: built-in name, file or URI
    text_field: str = "text"
    samples: int = 256  # number of prompts
    seed: int = 0
    task: str = "continue"
    batch_size: int = 64  # prompts per batch: about the fastest on a 2-core CPU (benchmarks/bench_generate.py)
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    # what the model computes in while it writes: auto is bfloat16 where the hardware multiplies it
    # natively (a GPU; a CPU with AVX512-BF16 or AMX: twice float32's speed here), float32 elsewhere;
    # generate_corpus records the resolved dtype (the text depends on it)
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.task not in PROMPT_TEMPLATES:
            raise IEFlowError(f"unknown task {self.task!r}; choose from {', '.join(PROMPT_TEMPLATES)}")
        for name in ("samples", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise IEFlowError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.dtype not in GENERATION_DTYPES:
            raise IEFlowError(f"unknown dtype {self.dtype!r}; choose from {', '.join(GENERATION_DTYPES)}")
        if not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise IEFlowError(f"need temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")


@dataclass(frozen=True)
class Prompt:
    id: int
    text: str  # the human document's opening sentence
    human: str  # the rest of that document, as its author wrote it


def _openings(documents: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(opening sentence, rest) of documents that have both."""
    for doc in documents:
        parts = list(sentences(doc))
        if len(parts) >= 2 and len(parts[0].split()) >= MIN_PROMPT_WORDS:
            yield parts[0], " ".join(parts[1:])


def select_prompts(settings: GenerationSettings, endpoint_url: str | None = None) -> list[Prompt]:
    """`samples` documents drawn uniformly (seeded reservoir sampling: one pass, bounded memory)."""
    from ie_flow.corpora import corpus_documents

    rng = np.random.default_rng(settings.seed)
    k = settings.samples
    picked: list[tuple[str, str]] = []
    seen = 0
    for seen, pair in enumerate(_openings(corpus_documents(settings.prompts, settings.text_field,
                                                           settings.seed, endpoint_url)), 1):
        if len(picked) < k:
            picked.append(pair)
        elif (j := int(rng.integers(0, seen))) < k:
            picked[j] = pair
    if seen < k:
        raise IEFlowError(
            f"prompt corpus {settings.prompts!r} has {seen} documents with an opening sentence of "
            f"{MIN_PROMPT_WORDS}+ words and more text after it; {k} prompts were asked for: ask for fewer"
        )
    return [Prompt(i, text, human) for i, (text, human) in enumerate(picked)]


def batch_order(prompts: list[Prompt]) -> list[int]:
    """The prompts in the order they are batched: by opening length, so that a batch, padded to its
    longest prompt, holds little padding. Texts go back to prompt order in the file."""
    return sorted(range(len(prompts)), key=lambda i: len(prompts[i].text))


def prompt_digest(prompts: list[Prompt]) -> str:
    return hashlib.sha256(json.dumps([[p.text, p.human] for p in prompts]).encode()).hexdigest()


def resolve_dtype(settings: GenerationSettings, gpus: float) -> GenerationSettings:
    """`auto` made concrete for the workers that will generate (the dtype goes into the metadata)."""
    if settings.dtype != "auto":
        return settings
    from ie_flow.hardware import cpu_has_native_bfloat16

    native = gpus > 0 or cpu_has_native_bfloat16()  # CPU workers: assumed to be CPUs like this one
    return dataclasses.replace(settings, dtype="bfloat16" if native else "float32")


def generation_metadata(settings: GenerationSettings, prompts: list[Prompt]) -> dict[str, Any]:
    from ie_flow.models import resolve_model

    return {"settings": asdict(settings), "model_source": resolve_model(settings.model).describe(),
            "sampler": SAMPLER,
            "prompt_digest": prompt_digest(prompts), "prompts": len(prompts),
            "prompt_template": PROMPT_TEMPLATES[settings.task], "code_version": __version__}


@dataclass
class GenerateText:
    """The generation step (an executor runs it in-process or on Ray workers): loads the model
    once per worker, then generates whole batches. Each batch has its own seed, so a resumed or
    distributed run writes the same text as an uninterrupted one."""

    settings: dict[str, Any]
    prompts: list[str]  # the openings, in prompt order
    name: str = "generate"
    unit: str = "prompt"

    def setup(self) -> None:
        import torch

        from ie_flow.models import load_model

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.spec = resolve_dtype(GenerationSettings(**self.settings), float(device == "cuda"))
        self.loaded = load_model(self.spec.model, device=device, dtype=self.spec.dtype)
        tok = self.loaded.tokenizer
        if tok.pad_token_id is None:  # the sampler pads rows to a common length (masked)
            tok.pad_token = tok.eos_token or tok.unk_token
        self.chat = bool(getattr(tok, "chat_template", None))

    def model_input(self, opening: str) -> str:
        """What the model reads: the chat-formatted request for instruct models, the raw text else."""
        if not self.chat:
            return opening
        message = PROMPT_TEMPLATES[self.spec.task].format(text=opening)
        return self.loaded.tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True)

    def generate_batch(self, batch: int) -> tuple[list[str], int]:
        """Texts of batch `batch` and the number of tokens generated."""
        import torch

        from ie_flow.corpora.sampling import Sampling, sample

        s, tok = self.spec, self.loaded.tokenizer
        rows = self.prompts[batch * s.batch_size : (batch + 1) * s.batch_size]
        # a chat template already holds its special tokens
        ids = [tok(self.model_input(r), add_special_tokens=not self.chat)["input_ids"] for r in rows]
        generator = torch.Generator(self.loaded.model.device).manual_seed(s.seed * 1_000_003 + batch)
        new = sample(self.loaded.model, ids, Sampling(s.max_new_tokens, s.temperature, s.top_p, s.repetition_penalty),
                     self.eos_ids(), tok.pad_token_id, generator)
        return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)], sum(len(n) for n in new)

    def eos_ids(self) -> set[int]:
        eos = self.loaded.model.generation_config.eos_token_id
        return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)

    def run(self, units: list[Any]) -> list[Any]:
        from ie_flow.executors import UnitDone

        records = []
        for unit in units:
            t0 = time.perf_counter()
            texts, tokens = self.generate_batch(unit.payload["batch"])
            done = BatchGenerated(tokens, time.perf_counter() - t0)
            records.append(UnitDone({"batch": unit.payload["batch"], "texts": texts}, done))
        return records


@dataclass(frozen=True)
class BatchGenerated:
    """What generating one batch took (run statistics, never in its completion record)."""

    tokens: int  # new tokens, up to each row's end of sequence
    seconds: float


@dataclass
class GenerationResult:
    uri: str
    records: int
    batches_generated: int  # by this run (0 when the file was complete already)
    new_tokens: int  # generated by this run
    seconds: float  # the whole call: prompt draw, model load, generation, writing
    generate_seconds: float = 0.0  # inside generate calls only (summed over workers)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        """Generation throughput (model load excluded)."""
        return self.new_tokens / max(self.generate_seconds, 1e-9)

    def summary(self) -> dict[str, Any]:
        """What `ie-flow corpus generate --json` prints."""
        return {"out": self.uri, "records": self.records, "batches_generated": self.batches_generated,
                "new_tokens": self.new_tokens, "seconds": round(self.seconds, 2),
                "generate_seconds": round(self.generate_seconds, 2),
                "tokens_per_second": round(self.tokens_per_second, 1),
                "prompt_digest": self.metadata.get("prompt_digest"), "settings": self.metadata.get("settings")}

    def describe(self) -> list[str]:
        """The same for people, with the commands that cut the two sides into windows."""
        if not self.batches_generated:
            head = f"{self.uri}: complete already ({self.records} texts), nothing generated"
        else:
            head = (f"{self.uri}: {self.records} texts; this run generated {self.batches_generated} batches, "
                    f"{self.new_tokens} tokens in {self.seconds:.1f} s ({self.tokens_per_second:.1f} tokens/s "
                    "while generating)")
        return [head, f"model-written windows: ie-flow corpus --corpus {self.uri}",
                f"human-written windows: ie-flow corpus --corpus {self.uri} --text-field human"]


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _existing_metadata(folder: Any, name: str) -> dict[str, Any] | None:
    """The metadata line of an existing output file (None when it has none)."""
    with folder.fs.open(folder.path(name), "rb") as f:
        first = f.readline()
    try:
        record = json.loads(first)
    except ValueError:
        return None
    return record.get(GENERATION_META_KEY) if isinstance(record, dict) else None


def _check_reuse(folder: Any, name: str, parts: Any, meta: dict[str, Any], force: bool,
                 replace_other: bool) -> bool:
    """True when the output exists, complete, for these settings. Output or unfinished batches
    made with other settings: an error, or replaced with `force` or `replace_other` (`force`
    regenerates even output made with these settings)."""
    if force:
        parts.remove("")
        return False
    if folder.exists(name):
        if _same(_existing_metadata(folder, name) or {}, meta):
            return True
        if not replace_other:
            raise IEFlowError(f"{folder.url(name)} exists and was not generated with these settings: "
                              "use another --out, or --force to replace it")
        log.info("generate: %s was generated with other settings: generating it again", folder.url(name))
    if parts.exists(PARTS_META) and not _same(parts.read_json(PARTS_META), meta):
        if not replace_other:
            raise IEFlowError(f"{parts.url()} holds unfinished batches generated with other settings: "
                              "use another --out, or --force to discard them")
        parts.remove("")
    return False


def generate_corpus(settings: GenerationSettings, out: str, ray_address: str | None = None,
                    force: bool = False, endpoint_url: str | None = None,
                    executor: str | None = None, replace_other: bool = False) -> GenerationResult:
    """Generate model-written text for `settings` into the JSONL file `out` (local or s3://).
    Batches finished by an interrupted run are kept (OUT.parts/), so a rerun resumes. Output made
    with other settings is an error unless `replace_other` (or `force`). Runs in-process
    (`serial`) unless a Ray cluster is named or `executor` is "ray"."""
    from ie_flow.executors import Completion, WorkUnit, get_executor
    from ie_flow.executors.resources import plan_model_workers
    from ie_flow.storage import Storage

    t0 = time.perf_counter()
    parent, _, name = out.rstrip("/").rpartition("/")
    folder = Storage(parent or ".", endpoint_url)
    parts = folder.child(name + ".parts")
    runner = get_executor(executor or ("ray" if ray_address else "serial"), address=ray_address)
    plan = plan_model_workers(runner.resources())
    settings = resolve_dtype(settings, plan.gpus)
    prompts = select_prompts(settings, endpoint_url)
    meta = generation_metadata(settings, prompts)
    if _check_reuse(folder, name, parts, meta, force, replace_other):
        log.info("generate: %s is complete for these settings", folder.url(name))
        return GenerationResult(folder.url(name), len(prompts), 0, 0, time.perf_counter() - t0, metadata=meta)
    parts.write_json(PARTS_META, meta)
    size = settings.batch_size
    units = [WorkUnit(f"batch-{b:05d}", {"batch": b}, weight=len(prompts[s : s + size]))
             for b, s in enumerate(range(0, len(prompts), size))]
    if runner.name == "serial":
        import torch

        # in-process: keep this process's torch threads (OMP_NUM_THREADS, a test's single thread)
        plan = dataclasses.replace(plan, threads=torch.get_num_threads())
    order = batch_order(prompts)
    step = GenerateText(asdict(settings), [prompts[i].text for i in order])
    records = runner.run(step, units, Completion(parts), plan)
    texts = [""] * len(prompts)
    for i, text in zip(order, (t for r in records for t in r["texts"])):
        texts[i] = text
    lines = [json.dumps({GENERATION_META_KEY: meta})]
    lines += [json.dumps({"id": p.id, "text": t, "human": p.human, "prompt": p.text}) for p, t in zip(prompts, texts)]
    folder.write_bytes(name, ("\n".join(lines) + "\n").encode())
    parts.remove("")  # the file is complete: its batches are no longer needed
    stats = runner.stats
    return GenerationResult(folder.url(name), len(texts), len(stats), sum(s.tokens for s in stats),
                            time.perf_counter() - t0, sum(s.seconds for s in stats), meta)
