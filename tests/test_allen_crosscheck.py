"""allensdk vs our NWB reader on a freshly simulated mini observatory, plus the comparators.

The cross-check runs in the allensdk environment (.venv-allen) through a subprocess; it is skipped
(reported as skipped, never as passed) when that environment is not built. The comparison
functions are pure numpy/pandas and are tested here directly.
"""

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantformer_jax.allen import crosscheck
from quantformer_jax.data import cache

REPO = Path(__file__).resolve().parents[1]
ALLEN_PYTHON = REPO / ".venv-allen" / "bin" / "python"
ALLEN_READY = REPO / ".venv-allen" / ".installed"  # written by `make allen-env` on success

# Runs the real CLI entry point, then once more with our reader perturbed in two places, to show
# that a disagreement is caught and named (the test of the cross-check itself).
_SCRIPT = """
import sys
from quantformer_jax.allen import crosscheck

cache_dir, first = sys.argv[1], sys.argv[2]
rc_clean = crosscheck.main(["--cache-dir", cache_dir])
print("RC_CLEAN", rc_clean, flush=True)
load = crosscheck.nwb.load_experiment

def perturbed(path, **kwargs):
    exp = load(path, **kwargs)
    exp.dff[1, 500] += 1e-3
    table = exp.stimulus_tables["drifting_gratings"]
    table.loc[table.index[4], "orientation"] += 45.0
    return exp

crosscheck.nwb.load_experiment = perturbed
rc_bad = crosscheck.main(["--cache-dir", cache_dir, "--experiments", first])
print("RC_BAD", rc_bad, flush=True)
"""


def test_allensdk_and_our_reader_agree_on_simulated_files(mini_observatory):
    if not ALLEN_READY.exists():
        pytest.skip(f"allensdk environment not built: {ALLEN_READY} missing (run `make allen-env`)")
    out = mini_observatory  # built fresh for this pytest session (conftest.py)
    index = cache.read_cache_index(out)
    first = index[0].experiment_id
    run = subprocess.run(
        [str(ALLEN_PYTHON), "-c", _SCRIPT, str(out), str(first)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    clean, _, bad = run.stdout.partition("RC_CLEAN")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "RC_CLEAN 0" in run.stdout, f"allensdk and our reader disagree:\n{clean}\n{run.stderr}"
    assert "cross-check PASSED" in clean
    for entry in index:
        assert f"experiment {entry.experiment_id}: OK" in clean
    assert "cache index: OK  3 containers, 3 experiments" in clean
    # The perturbed reader is caught, field by field, and the run fails.
    assert "RC_BAD 1" in bad
    assert "cross-check FAILED: 2 mismatches" in bad
    assert "- dff: 1 of" in bad and "worst at (1, 500)" in bad
    assert "- stimulus_table('drifting_gratings')['orientation']: 1 of" in bad


def test_compare_arrays_tolerance_is_relative_to_one_plus_the_value():
    ref = np.array([[0.0, 1000.0], [np.nan, 2.0]])
    assert crosscheck.compare_arrays("x", ref, ref + np.array([[5e-7, 9e-4], [0, 0]])) == []
    (msg,) = crosscheck.compare_arrays("x", ref, ref + np.array([[2e-6, 0], [0, 0]]))
    assert msg.startswith("x: 1 of 4 values differ beyond 1e-06; worst at (0, 0)")
    times = np.arange(100_000) / 30.0 + 9.123456789  # timestamps compare exactly (tol 0)
    assert crosscheck.compare_arrays("t", times, times.copy(), 0.0) == []
    assert crosscheck.compare_arrays("t", times, times.astype(np.float32), 0.0)


def test_compare_arrays_names_shape_nan_and_exact_mismatches():
    assert (
        "shape allensdk (3,) vs ours (2,)"
        in crosscheck.compare_arrays("ids", np.arange(3), np.arange(2))[0]
    )
    (msg,) = crosscheck.compare_arrays("speed", [1.0, np.nan], [1.0, 0.0])
    assert "NaN at different places" in msg
    (msg,) = crosscheck.compare_arrays("s", np.array(["a", "b"]), np.array(["a", "c"]))
    assert msg == "s: 1 of 2 values differ; first at (1,): 'b' vs 'c'"
    big = np.array([910000001, 910000002], dtype=np.int64)
    assert crosscheck.compare_arrays("ids", big, big + np.array([0, 1]))  # ids compare exactly


def test_compare_tables_checks_columns_row_index_dtypes_and_values():
    ref = pd.DataFrame(
        {"orientation": [0.0, np.nan, 45.0], "start": [10, 100, 200], "end": [70, 160, 260]},
        index=[2, 0, 1],  # allensdk keeps the file's row index after sorting by start
    )
    assert crosscheck.compare_tables("t", ref, ref.copy(), 1e-6) == []
    (msg,) = crosscheck.compare_tables("t", ref, ref[["start", "orientation", "end"]], 1e-6)
    assert "columns allensdk ['orientation', 'start', 'end']" in msg
    (msg,) = crosscheck.compare_tables("t", ref, ref.reset_index(drop=True), 1e-6)
    assert msg.startswith("t row index:")
    (msg,) = crosscheck.compare_tables("t", ref, ref.astype({"start": np.float64}), 1e-6)
    assert msg == "t['start']: dtype allensdk int64 vs ours float64"
    changed = ref.copy()
    changed.loc[1, "end"] = 261
    (msg,) = crosscheck.compare_tables("t", ref, changed, 1e-6)
    assert msg == "t['end']: 1 of 3 values differ; first at (2,): 260 vs 261"
