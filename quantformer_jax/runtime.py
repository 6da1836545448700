"""Process-level tuning of the host memory allocator for XLA:CPU (call once, before jax runs).

Why: XLA:CPU allocates every executable's temporary buffers (hundreds of MB for a training step)
with malloc at each call. glibc serves allocations above its mmap threshold (at most 32 MB) with
fresh `mmap`s and unmaps them on free, so every step touches brand-new pages: at the paper's
pretraining size that is ~158k page faults and ~0.5 s of kernel time per step on the 2-core
machine (benchmarks/README.md). Keeping large blocks in the heap and never trimming it makes the
pages stay mapped between steps: no faults, no kernel time, and the same numbers (the allocator
never changes a result).

Trimming must be off entirely, not just above a large threshold: when two steps' buffers briefly
coexist (asynchronous dispatch on a busy machine) the free heap top exceeds any fixed threshold and
glibc returns it, and the faults come back. The cost is that memory freed by the process is kept
for reuse instead of being returned to the OS (the resident size stays at its peak).

The heap is also given `HEAP_RESERVE_BYTES` of address space advised for transparent huge pages,
so the buffers are faulted in 2 MiB at a time (another ~10% on the paper-size step);
QUANTFORMER_HUGE_PAGES=0 keeps the rest of the tuning but skips this. Set
QUANTFORMER_MALLOC_TUNING=0 to opt out.

    from quantformer_jax import runtime
    runtime.tune_host_allocator()

`request_deterministic_ops` is the other process-level setting every entry point makes before jax
starts: XLA's GPU kernels are not deterministic by default (atomics in reductions and scatters),
so a killed and resumed GPU run would not end with the parameters of an uninterrupted one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_MADV_HUGEPAGE = 14  # linux/mman.h
_HUGE_PAGE = 2 << 20
# Heap address space pre-reserved with the huge-page advice. Untouched pages cost no memory: only
# what a run really uses becomes resident (in 2 MiB pages instead of 4 KiB ones).
HEAP_RESERVE_BYTES = 8 << 30
_NEVER_TRIM = -1  # converted to SIZE_MAX by glibc: never give the heap top back
ENV_SWITCH = "QUANTFORMER_MALLOC_TUNING"
DETERMINISM_SWITCH = "QUANTFORMER_DETERMINISTIC"  # =0: leave XLA's GPU kernels as they are
DETERMINISTIC_GPU_FLAG = "--xla_gpu_deterministic_ops=true"
HUGE_PAGES_SWITCH = "QUANTFORMER_HUGE_PAGES"  # =0: tune the allocator but skip the huge pages

_applied: bool | None = None


def tune_host_allocator() -> bool:
    """Makes glibc keep freed memory mapped (see module docstring); idempotent.

    Returns:
        True when the settings were applied (Linux with glibc, not opted out), else False.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV_SWITCH, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # No mmap for large blocks: they come from the heap and are reused between steps.
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    # Do not give the heap top back to the OS after each step.
    ok &= mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1
    # One arena: XLA's worker threads otherwise each grow their own heap of step-sized blocks.
    ok &= mallopt(_M_ARENA_MAX, 1) == 1
    if ok and os.environ.get(HUGE_PAGES_SWITCH, "1") != "0":
        _reserve_huge_page_heap(libc, HEAP_RESERVE_BYTES)
    _applied = bool(ok)
    return _applied


def _reserve_huge_page_heap(libc: ctypes.CDLL, num_bytes: int) -> bool:
    """Grows the (never trimmed) heap by `num_bytes` of address space advised MADV_HUGEPAGE.

    Transparent huge pages are opt-in ("madvise" mode) on most distributions. Step buffers
    placed in this range are then faulted in 2 MiB at a time (512x fewer faults, fewer TLB
    misses), as glibc's `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` would do if set before start-up.
    Best effort: returns False (and changes nothing else) when the block or the advice is refused.
    """
    libc.malloc.argtypes, libc.malloc.restype = (ctypes.c_size_t,), ctypes.c_void_p
    libc.free.argtypes, libc.free.restype = (ctypes.c_void_p,), None
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    libc.madvise.restype = ctypes.c_int
    block = libc.malloc(num_bytes)  # from the heap (mmap is off): address space, not memory
    if not block:
        return False
    start = -(-block // _HUGE_PAGE) * _HUGE_PAGE
    length = (block + num_bytes - start) // _HUGE_PAGE * _HUGE_PAGE
    advised = libc.madvise(start, length, _MADV_HUGEPAGE) == 0
    libc.free(block)  # back to the heap's free top, which is never trimmed: the advice stays
    return advised


def request_deterministic_ops() -> bool:
    """Adds `--xla_gpu_deterministic_ops=true` to XLA_FLAGS, so GPU runs are reproducible.

    Measured on an H100 (jax 0.11): two identical `configs/pretrain.py:runlocal` runs of 9 steps
    ended 6.8e-4 apart in every parameter leaf with XLA's defaults and bit-identical with this
    flag. On CPU it changes nothing (XLA:CPU is deterministic). It must run before jax creates
    its backends (the first computation); an XLA_FLAGS that already sets the flag is left
    alone, and QUANTFORMER_DETERMINISTIC=0 opts out (faster scatters, no bitwise resume).

    Returns:
        True when the flag is in XLA_FLAGS after the call.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_deterministic_ops" in flags:
        return DETERMINISTIC_GPU_FLAG in flags.split()
    if os.environ.get(DETERMINISM_SWITCH, "1") == "0":
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_GPU_FLAG}".strip()
    return True
