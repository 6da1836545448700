"""Reading an allensdk Brain Observatory cache offline: its index and the state of its NWB files.

Runs in the allensdk environment (`make allen-env`); allensdk is imported inside the functions
that need it so that `format_listing` and the records can be used and tested from the main venv.
`python -m quantformer_jax.allen.download --cache-dir DIR --list` prints `format_listing`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence

MANIFEST = "manifest.json"
INDEX_FILES = ("experiment_containers.json", "ophys_experiments.json")
PART_SUFFIX = ".part"  # an unfinished download of <id>.nwb (see download.stream_to_file)


def require_allensdk() -> None:
    """Checks that allensdk is importable, else says how to get the environment that has it.

    Raises:
      RuntimeError: allensdk is not installed in this Python (e.g. the main venv).
    """
    try:
        import allensdk  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            f"allensdk is not importable in {sys.executable} ({e}); build its environment with "
            "`make allen-env` and run this tool with .venv-allen/bin/python"
        ) from None


def open_cache(cache_dir: str, api=None):
    """allensdk's `BrainObservatoryCache` on `<cache_dir>/manifest.json` (created if missing)."""
    require_allensdk()
    from allensdk.core.brain_observatory_cache import BrainObservatoryCache

    os.makedirs(cache_dir, exist_ok=True)
    return BrainObservatoryCache(manifest_file=os.path.join(cache_dir, MANIFEST), api=api)


def offline_api():
    """A BrainObservatoryApi that never goes online (ALLEN_FORMAT.md 2.3).

    `get_ophys_experiments` always asks for the eye-tracking files; this answers `[]`, and any
    other query (an index JSON or an NWB file that is not in the cache) fails with a clear error.
    """
    require_allensdk()
    from allensdk.api.queries.brain_observatory_api import BrainObservatoryApi

    class OfflineApi(BrainObservatoryApi):
        def template_query(self, template_name, entry_name, **kwargs):
            if entry_name == "all_eye_mapping_files":
                return []
            raise FileNotFoundError(
                f"offline: {entry_name!r} is not in the cache (query {template_name}/{entry_name} "
                f"{kwargs or ''}); fetch it first without --list"
            )

    return OfflineApi()


@dataclasses.dataclass(frozen=True)
class CachedExperiment:
    """One experiment of a cache index and the state of its NWB file."""

    experiment_id: int
    container_id: int
    session_type: str
    nwb_path: str
    present: bool  # the complete NWB file is in the cache
    size_bytes: int  # of the complete file; 0 when absent
    partial_bytes: int  # of an unfinished `<id>.nwb.part`; 0 when none

    @property
    def state(self) -> str:
        if self.present:
            return "present"
        return "partial" if self.partial_bytes else "missing"


def read_index(cache_dir: str) -> tuple[list[dict], list[CachedExperiment]]:
    """Reads a cache's containers and experiments offline, with allensdk (ALLEN_FORMAT.md 2.3).

    Returns:
      (containers as allensdk's simple dicts, one CachedExperiment per indexed experiment).

    Raises:
      FileNotFoundError: `cache_dir` has no manifest.json or no index JSON.
    """
    if not os.path.isfile(os.path.join(cache_dir, MANIFEST)):
        raise FileNotFoundError(f"{cache_dir}: not an allensdk cache directory (no {MANIFEST})")
    for name in INDEX_FILES:
        if not os.path.isfile(os.path.join(cache_dir, name)):
            raise FileNotFoundError(
                f"{cache_dir}: no {name}, so no index to list; a download run (without --list) "
                "writes it"
            )
    boc = open_cache(cache_dir, offline_api())
    containers = boc.get_experiment_containers(include_failed=True)
    records = boc.get_ophys_experiments(include_failed=True)
    experiments = []
    for exp in records:
        path = boc.get_cache_path(None, boc.EXPERIMENT_DATA_KEY, int(exp["id"]))
        part = path + PART_SUFFIX
        experiments.append(
            CachedExperiment(
                experiment_id=int(exp["id"]),
                container_id=int(exp["experiment_container_id"]),
                session_type=exp["session_type"],
                nwb_path=path,
                present=os.path.exists(path),
                size_bytes=os.path.getsize(path) if os.path.exists(path) else 0,
                partial_bytes=os.path.getsize(part) if os.path.exists(part) else 0,
            )
        )
    return containers, experiments


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_listing(
    cache_dir: str,
    containers: Sequence[dict],
    experiments: Sequence[CachedExperiment],
    container_ids: Sequence[int] | None = None,
) -> str:
    """Text listing of a cache: a summary line, then each container with its experiments' files.

    Args:
      cache_dir: shown in the summary.
      containers: allensdk simple container dicts (id, targeted_structure, imaging_depth, cre_line).
      experiments: from `read_index`.
      container_ids: containers to show; None = those with at least one (partial) NWB file.

    Raises:
      ValueError: a requested container is not in the index.
    """
    present = [e for e in experiments if e.state == "present"]
    partial = [e for e in experiments if e.state == "partial"]
    lines = [
        f"{cache_dir}: {len(containers)} containers, {len(experiments)} experiments in the index; "
        f"{len(present)} NWB files present ({human_size(sum(e.size_bytes for e in present))}), "
        f"{len(partial)} partial downloads"
    ]
    info = {int(c["id"]): c for c in containers}
    if container_ids is None:
        shown = sorted({e.container_id for e in experiments if e.state != "missing"})
    else:
        shown = [int(c) for c in container_ids]
        unknown = [c for c in shown if c not in info]
        if unknown:
            raise ValueError(f"{cache_dir}: container(s) {unknown} are not in the cache index")
    for cid in shown:
        c = info.get(cid, {})
        lines.append(
            f"container {cid}  {c.get('targeted_structure', '?')}  "
            f"{c.get('imaging_depth', '?')} um  {c.get('cre_line', '?')}"
        )
        for e in sorted(
            (e for e in experiments if e.container_id == cid), key=lambda e: e.session_type
        ):
            if e.state == "present":
                what = f"{human_size(e.size_bytes)}  {e.nwb_path}"
            elif e.state == "partial":
                what = f"partial download ({human_size(e.partial_bytes)} so far)"
            else:
                what = "not downloaded"
            lines.append(f"  {e.experiment_id}  {e.session_type:<16}  {what}")
    return "\n".join(lines)
