"""Generation throughput for the human-vs-model corpus (issue 24): ie-flow's generation step against a
bare `model.generate` of the same model, prompts and batch, side by side in one process.

  bare    : the prompts chat-formatted and tokenized once, then `model.generate(**enc, ...)` with the
            step's sampling settings (KV cache on, as by default)
  ie-flow : `GenerateText.generate_batch` (chat formatting, tokenizing, generate, counting each row's
            new tokens up to its end of sequence, decoding)

New tokens are counted the same way on both sides (each row up to and including its end-of-sequence
token). Ratio = ie-flow tokens/s / bare tokens/s (target >= 0.8); the absolute target is 5x the 58
new tokens/s the reproduction measured at batch 16, on 2 cores.

    .venv/bin/python benchmarks/bench_generate.py                        # batches 16, 64, 128
    .venv/bin/python benchmarks/bench_generate.py --batches 64 --prompts 128
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch

    from ie_flow.corpora.generate import GenerateText, GenerationSettings, select_prompts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="16,64,128", help="batch sizes, comma separated")
    ap.add_argument("--prompts", type=int, default=128, help="prompts per batch size (whole batches)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, max_new_tokens {args.max_new_tokens}")
    print(f"{'batch':>5}  {'bare tok/s':>10}  {'ie-flow tok/s':>13}  {'ratio':>5}")
    for size in (int(b) for b in args.batches.split(",")):
        settings = GenerationSettings(samples=max(size, args.prompts // size * size), batch_size=size,
                                      max_new_tokens=args.max_new_tokens)
        step = GenerateText(asdict(settings), [p.text for p in select_prompts(settings)])
        step.setup()
        tok, model = step.loaded.tokenizer, step.loaded.model
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
            bare_tokens += step.generated_tokens(out[:, enc["input_ids"].shape[1]:])
            t = time.perf_counter()
            _, tokens = step.generate_batch(batch)
            ours_seconds += time.perf_counter() - t
            ours_tokens += tokens
        bare, ours = bare_tokens / bare_seconds, ours_tokens / ours_seconds
        print(f"{size:>5}  {bare:>10.1f}  {ours:>13.1f}  {ours / bare:>5.2f}", flush=True)


if __name__ == "__main__":
    main()
