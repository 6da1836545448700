"""runtime.tune_host_allocator: freed large blocks stay mapped (no page faults on reuse)."""

import os
import subprocess
import sys
import textwrap

import pytest

# Allocates, touches and frees a 64 MiB block 5 times, then prints the minor page faults the
# last 4 rounds cost and whether the tuning was applied.
_PROBE = textwrap.dedent(
    """
    import resource, sys
    sys.path.insert(0, {root!r})
    from quantformer_jax import runtime
    applied = runtime.tune_host_allocator()
    assert runtime.tune_host_allocator() == applied  # idempotent
    def round_trip():
        block = bytearray(64 << 20)  # calloc'd: pages are only mapped when touched
        block[:: 4096] = b"x" * len(block[:: 4096])
        del block
    round_trip()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        round_trip()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _probe(switch: str) -> tuple[bool, int]:
    env = {**os.environ, "QUANTFORMER_MALLOC_TUNING": switch}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(root=ROOT)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_allocator_reuses_freed_pages_and_can_be_switched_off():
    applied, tuned_faults = _probe("1")
    assert applied
    off, default_faults = _probe("0")
    assert not off
    pages = 4 * (64 << 20) // 4096  # pages touched by the 4 measured rounds
    # glibc's default returns a 64 MiB block to the OS on free: every round faults it in again.
    assert default_faults > 0.9 * pages
    # Tuned, the block is reused from the heap: essentially no faults after the first round.
    assert tuned_faults < 0.05 * pages


def test_deterministic_gpu_ops_flag_is_added_once_and_respects_the_user(monkeypatch):
    from quantformer_jax import runtime

    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    monkeypatch.delenv(runtime.DETERMINISM_SWITCH, raising=False)
    assert runtime.request_deterministic_ops()
    assert runtime.request_deterministic_ops()  # idempotent: the flag appears once
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=4",
        runtime.DETERMINISTIC_GPU_FLAG,
    ]
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=false")  # the user's choice
    assert not runtime.request_deterministic_ops()
    assert os.environ["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=false"
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv(runtime.DETERMINISM_SWITCH, "0")
    assert not runtime.request_deterministic_ops()
    assert os.environ["XLA_FLAGS"] == ""
