"""What this machine's CPU computes natively, for choosing a dtype (the critic trainer's precision,
the generation step's dtype). No ie_flow imports: every layer may ask."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16; Linux flags). Without
    it, bfloat16 matrix products are emulated and slower than float32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
