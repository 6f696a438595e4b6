"""Stage 2's InfoNCE profile of the demo's shape (30 layers x 8 positions, n = 4,096, d = 576, default
settings, one seed) with the ie_flow code under ROOT, to compare two versions of the estimators on
the same machine in the same session:

    mkdir -p /tmp/old && git archive REF ie_flow | tar -x -C /tmp/old
    taskset -c 0-3 python benchmarks/bench_before_after.py /tmp/old 4
    taskset -c 0-3 python benchmarks/bench_before_after.py . 4
"""
import importlib.util
import os
import sys
import time

root, threads = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, root)
import torch  # noqa: E402

torch.set_num_threads(threads)
import ie_flow.estimators as E  # noqa: E402  (from ROOT)

# the benchmark module's data generator; its own `import ie_flow` finds ROOT's, already imported
spec = importlib.util.spec_from_file_location("prof", os.path.join(os.path.dirname(__file__), "bench_estimator_profile.py"))
prof = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prof)
h = prof.synthetic_profile(30, 8, 4096, 576)
xs, ys = h[:-1].reshape(-1, 4096, 576), h[1:].reshape(-1, 4096, 576)
t0 = time.perf_counter()
out = E.estimate_mi_many(xs, ys, seeds=(0,), device="cpu")
dt = time.perf_counter() - t0
print(f"{root}: {dt:.1f} s for {len(out)} estimates; mean {sum(e.bits for e in out) / len(out):.3f} bits; "
      f"flagged {sum(bool(e.settings.get('lower_bound') or e.settings.get('not_resolvable')) for e in out)}; "
      f"MLP re-estimates {sum('mlp_bits' in e.diagnostics for e in out)}; ie_flow from {E.__file__}")
