"""Generation throughput for the human-vs-model corpus (issue 24): ie-flow's generation step against a
bare `model.generate` of the same model, prompts and batch, side by side in one process.

  bare    : the prompts chat-formatted and tokenized once, then `model.generate(**enc, ...)` with the
            step's sampling settings (KV cache on, as by default)
  ie-flow : `GenerateText.generate_batch` (chat formatting, tokenizing, ie_flow.corpora.sampling's loop:
            the prompts' common prefix computed once, a preallocated cache, top-p from a top-256
            prefilter, ended rows dropped; decoding)

Both read the prompts in the order `ie-flow corpus generate` batches them (by opening length).

New tokens are counted the same way on both sides (each row up to and including its end-of-sequence
token). Ratio = ie-flow tokens/s / bare tokens/s (target >= 0.8); the absolute target is 5x the 58
new tokens/s the reproduction measured at batch 16, on 2 cores.

    .venv/bin/python benchmarks/bench_generate.py                        # batches 16, 64, 128
    .venv/bin/python benchmarks/bench_generate.py --batches 64 --prompts 128 --dtype float32 --ceiling
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def generated_tokens(new, eos: set[int]) -> int:
    """Tokens per row of `generate`'s output up to and including its end-of-sequence token
    (generate pads ended rows after it; counting non-pad ids would be wrong where pad = eos)."""
    total = 0
    for row in new.tolist():
        ends = [i for i, t in enumerate(row) if t in eos]
        total += ends[0] + 1 if ends else len(row)
    return total


def ceiling(model, rows: list[list[int]], batch: int, new_tokens: int) -> tuple[float, float, float]:
    """What the model's own forward allows for these prompts, timed on a batch of `batch` rows of
    their mean length past the common prefix: (prefill tokens/s, new tokens/s of greedy decoding
    steps with a preallocated cache and no sampling, and the new tokens/s of a generation that did
    both and nothing else). No sampler can beat the last number."""
    import torch
    from transformers import StaticCache

    from ie_flow.corpora.sampling import common_prefix

    prefix = common_prefix(rows)
    own = sum(len(r) - prefix for r in rows) / len(rows)
    width = round(own)
    ids = torch.tensor([(r[prefix:] * width)[:width] for r in rows[:batch]])
    for _ in range(2):  # the first pass warms the kernels up for these shapes; the second is timed
        cache = StaticCache(config=model.config, max_cache_len=width + new_tokens)
        with torch.inference_mode():
            t = time.perf_counter()
            logits = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits
            prefill = ids.numel() / (time.perf_counter() - t)
            t = time.perf_counter()
            for _ in range(new_tokens - 1):
                logits = model(input_ids=logits[:, -1].argmax(-1, keepdim=True), cache=cache, use_cache=True,
                               logits_to_keep=1).logits
            decode = len(ids) * (new_tokens - 1) / (time.perf_counter() - t)
    return prefill, decode, new_tokens / (own / prefill + new_tokens / decode)


def main() -> None:
    import torch

    from ie_flow.corpora.generate import GenerateText, GenerationSettings, batch_order, select_prompts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="16,64,128", help="batch sizes, comma separated")
    ap.add_argument("--prompts", type=int, default=128, help="prompts per batch size (whole batches)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="auto", help="what the model computes in (auto: as `corpus generate` picks)")
    ap.add_argument("--ceiling", action="store_true", help="also time the model's own forward on each batch size's "
                    "first batch: the most any sampler could reach with these prompts")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, max_new_tokens {args.max_new_tokens}")
    print(f"{'batch':>5}  {'bare tok/s':>10}  {'ie-flow tok/s':>13}  {'ratio':>5}")
    for size in (int(b) for b in args.batches.split(",")):
        settings = GenerationSettings(samples=max(size, args.prompts // size * size), batch_size=size,
                                      max_new_tokens=args.max_new_tokens, dtype=args.dtype)
        prompts = select_prompts(settings)
        step = GenerateText(asdict(settings), [prompts[i].text for i in batch_order(prompts)])
        step.setup()
        tok, model = step.loaded.tokenizer, step.loaded.model
        tok.padding_side = "left"  # for generate: new tokens follow the prompt in every row
        if size == int(args.batches.split(",")[0]):
            print(f"model computes in {model.dtype} (both sides)", flush=True)
        bare_tokens = ours_tokens = 0
        bare_seconds = ours_seconds = 0.0
        for batch in range(settings.samples // size):
            rows = step.prompts[batch * size : (batch + 1) * size]
            enc = tok([step.model_input(r) for r in rows], return_tensors="pt", padding=True,
                      add_special_tokens=not step.chat)
            torch.manual_seed(batch)
            t = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(**enc, do_sample=True, temperature=settings.temperature, top_p=settings.top_p,
                                     repetition_penalty=settings.repetition_penalty,
                                     max_new_tokens=settings.max_new_tokens, pad_token_id=tok.pad_token_id)
            bare_seconds += time.perf_counter() - t
            bare_tokens += generated_tokens(out[:, enc["input_ids"].shape[1]:], step.eos_ids())
            t = time.perf_counter()
            _, tokens = step.generate_batch(batch)
            ours_seconds += time.perf_counter() - t
            ours_tokens += tokens
        bare, ours = bare_tokens / bare_seconds, ours_tokens / ours_seconds
        print(f"{size:>5}  {bare:>10.1f}  {ours:>13.1f}  {ours / bare:>5.2f}", flush=True)
        if args.ceiling:
            rows = [tok(step.model_input(r), add_special_tokens=not step.chat)["input_ids"] for r in step.prompts]
            prefill, decode, most = ceiling(model, rows, size, settings.max_new_tokens)
            print(f"       the model's forward alone: prefill {prefill:.0f} tok/s, greedy decoding {decode:.0f} new tok/s; "
                  f"with these prompts at most {most:.0f} new tok/s", flush=True)


if __name__ == "__main__":
    main()
