"""Fetch Brain Observatory experiment NWB files into an allensdk cache, and list a cache offline.

Run in the allensdk environment (`make allen-env`):

    .venv-allen/bin/python -m quantformer_jax.allen.download --cache-dir data/allen
    .venv-allen/bin/python -m quantformer_jax.allen.download --cache-dir data/allen --list

The cache directory has allensdk's layout (`manifest.json`, `experiment_containers.json`,
`ophys_experiments.json`, `ophys_experiment_data/<experiment_id>.nwb`), so `BrainObservatoryCache`
and the project's configs (`--config.data.cache_dir=DIR`) read it as they read the simulated
Observatory. The experiment index comes from `BrainObservatoryCache`; the NWB files themselves
are streamed here (not by allensdk) to `<id>.nwb.part` and renamed when complete, because
allensdk writes straight to `<id>.nwb` and then treats an interrupted download as complete.

Exit codes: 0 done, 1 bad arguments or data (or an HTTP error answer), 2 the Allen servers cannot
be reached, 3 a download stopped early (its `.part` file is kept and the next run resumes it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence

from tqdm import tqdm

from quantformer_jax import constants
from quantformer_jax.allen.listing import (
    PART_SUFFIX,
    format_listing,
    human_size,
    open_cache,
    read_index,
    require_allensdk,
)

API_HOST = "api.brain-map.org"
SESSION_TYPES = tuple(constants.EPOCH_GAP_THRESHOLD_FRAMES)  # three_session_A, _B, _C, _C2
DEFAULT_STIMULI = ("drifting_gratings",)  # what the configs train on (session A)
EXIT_BAD_INPUT = 1
EXIT_UNREACHABLE = 2
EXIT_INCOMPLETE = 3
_CHUNK_BYTES = 1 << 20


class ServerUnreachableError(RuntimeError):
    """The Allen Brain Observatory API could not be reached (no network, DNS, timeout)."""


class DownloadIncompleteError(RuntimeError):
    """A transfer ended before the announced size; the `.part` file is kept for resuming."""


@dataclasses.dataclass(frozen=True)
class FetchedFile:
    """One experiment NWB file in the cache after `fetch`."""

    experiment_id: int
    container_id: int
    session_type: str
    path: str
    size_bytes: int
    status: str  # "present" (already complete in the cache) | "downloaded"


# --- Network errors ------------------------------------------------------------------------------


def unreachable_message(error: BaseException, host: str = API_HOST) -> str:
    """One line saying that `host` cannot be reached and why, in words a user can act on."""
    reason = getattr(error, "reason", error)  # URLError wraps the socket error in .reason
    if isinstance(reason, socket.gaierror):
        why = f"the host name could not be resolved ({reason.strerror}; no network or no DNS?)"
    elif isinstance(reason, TimeoutError | socket.timeout):
        why = "the connection timed out"
    elif isinstance(reason, ConnectionRefusedError):
        why = "the connection was refused"
    else:
        why = str(reason) or type(reason).__name__
    return (
        f"cannot reach the Allen Brain Observatory servers ({host}): {why}. Files already in the "
        "cache stay usable (list them offline with --list); partial downloads resume next run."
    )


@contextlib.contextmanager
def _reaching(host: str = API_HOST) -> Iterator[None]:
    """Turns any 'could not connect' error raised inside into a ServerUnreachableError."""
    try:
        yield
    except urllib.error.HTTPError:
        raise  # the server answered: not a connectivity problem
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:  # allensdk uses urllib
        raise ServerUnreachableError(unreachable_message(e, host)) from e


# --- Resumable file transfer ---------------------------------------------------------------------


def _total_size(response, resumed: bool) -> int | None:
    """The full file size the server announces, or None when it does not say."""
    if resumed:  # "Content-Range: bytes 100-999/1000"
        match = re.search(r"/(\d+)\s*$", response.headers.get("Content-Range", ""))
        return int(match.group(1)) if match else None
    length = response.headers.get("Content-Length")
    return int(length) if length is not None else None


def stream_to_file(
    url: str, path: str, *, progress: bool = True, desc: str = "", timeout_s: float = 60.0
) -> int:
    """Downloads `url` to `path` through `path + '.part'`, resuming a partial `.part` file.

    A `.part` file left by an interrupted run is continued with an HTTP Range request (restarted
    from zero when the server ignores Range). The file is renamed to `path` only once its size
    equals the size the server announced, so `path` existing means the file is complete.

    Args:
      url: the file's address.
      path: final location.
      progress: show a tqdm bar (bytes) on stderr.
      desc: label of the bar.
      timeout_s: socket timeout per connect/read.

    Returns:
      The size of the complete file in bytes.

    Raises:
      ServerUnreachableError: the host cannot be reached.
      DownloadIncompleteError: the transfer ended short; the `.part` file is kept.
    """
    part = path + PART_SUFFIX
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    host = urllib.parse.urlsplit(url).hostname or url
    with _reaching(host):
        try:
            response = urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=timeout_s
            )
        except urllib.error.HTTPError as e:
            if e.code != 416 or not have:  # 416: our Range starts past the end -> start again
                raise
            os.remove(part)
            return stream_to_file(url, path, progress=progress, desc=desc, timeout_s=timeout_s)
        with response:
            resumed = bool(have) and response.status == 206
            if not resumed:
                have = 0
            total = _total_size(response, resumed)
            with (
                open(part, "ab" if resumed else "wb") as f,
                tqdm(
                    total=total,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=desc,
                    disable=not progress,
                    file=sys.stderr,
                ) as bar,
            ):
                try:
                    while chunk := response.read(_CHUNK_BYTES):
                        f.write(chunk)
                        bar.update(len(chunk))
                except http.client.IncompleteRead as e:  # connection closed early: keep .part
                    f.write(e.partial)
    size = os.path.getsize(part)
    if total is not None and size != total:
        raise DownloadIncompleteError(
            f"{url}: received {size} of {total} bytes; {part} is kept and the next run resumes it"
        )
    os.replace(part, path)
    return size


# --- Fetching -----------------------------------------------------------------------------------


def check_selection(
    experiments: Sequence[dict], container_ids: Sequence[int], wanted: str
) -> dict[int, list[dict]]:
    """Groups `experiments` by container; every requested container must have at least one.

    Raises:
      ValueError: naming the containers with no matching experiment.
    """
    by_container: dict[int, list[dict]] = {int(c): [] for c in container_ids}
    for exp in experiments:
        cid = int(exp["experiment_container_id"])
        if cid in by_container:
            by_container[cid].append(exp)
    missing = sorted(c for c, exps in by_container.items() if not exps)
    if missing:
        raise ValueError(
            f"no experiment of {wanted} in the Allen index for container(s) {missing} "
            "(unknown id, failed container, or no such session)"
        )
    return by_container


def fetch(
    cache_dir: str,
    container_ids: Sequence[int],
    *,
    stimuli: Sequence[str] | None = None,
    session_types: Sequence[str] | None = None,
    base_uri: str | None = None,
    api=None,
    progress: bool = True,
) -> list[FetchedFile]:
    """Fetches the NWB files of the given containers' sessions into `cache_dir` (allensdk layout).

    Complete files already in the cache are not downloaded again; partial ones are resumed. Each
    new file is opened with allensdk to check that it is the experiment asked for.

    Args:
      cache_dir: the cache directory (created if needed).
      container_ids: experiment container ids.
      stimuli: keep sessions that show any of these (allensdk names); exclusive with session_types.
      session_types: keep these session types (three_session_A/B/C/C2).
      base_uri: the API server (None = allensdk's default, http://api.brain-map.org).
      api: a BrainObservatoryApi to use instead (tests); overrides base_uri.
      progress: show progress bars.

    Returns:
      One FetchedFile per experiment, ordered by container then session type.
    """
    require_allensdk()
    from allensdk.brain_observatory import stimulus_info

    if stimuli and session_types:
        raise ValueError("give stimuli or session_types, not both")
    unknown = sorted(set(stimuli or ()) - stimulus_info.all_stimuli())
    if unknown:
        raise ValueError(
            f"unknown stimuli {unknown}; allensdk knows {sorted(stimulus_info.all_stimuli())}"
        )
    if api is None and base_uri:
        from allensdk.api.queries.brain_observatory_api import BrainObservatoryApi

        api = BrainObservatoryApi(base_uri=base_uri)
    boc = open_cache(cache_dir, api)
    host = urllib.parse.urlsplit(boc.api.api_url).hostname or boc.api.api_url
    with _reaching(host):
        # Both index files are written (lazily, whole-Observatory) so the cache lists offline.
        containers = boc.get_experiment_containers(include_failed=True)
        experiments = boc.get_ophys_experiments(
            experiment_container_ids=list(container_ids),
            stimuli=list(stimuli) if stimuli else None,
            session_types=list(session_types) if session_types else None,
        )
    failed = sorted(int(c["id"]) for c in containers if c["failed"] and c["id"] in container_ids)
    if failed:
        raise ValueError(f"container(s) {failed} are marked failed in the Allen index")
    wanted = f"stimuli {list(stimuli)}" if stimuli else f"session types {list(session_types or [])}"
    by_container = check_selection(
        experiments, container_ids, wanted if stimuli or session_types else "any session"
    )
    todo = [
        e
        for cid in by_container
        for e in sorted(by_container[cid], key=lambda e: e["session_type"])
    ]
    fetched = []
    for i, exp in enumerate(todo, 1):
        exp_id = int(exp["id"])
        path = boc.get_cache_path(None, boc.EXPERIMENT_DATA_KEY, exp_id)
        status = "present"
        if not os.path.exists(path):  # allensdk's own rule: a file that exists is complete
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with _reaching(host):
                records = boc.api.template_query(
                    "brain_observatory_queries", "ophys_experiment_data", ophys_experiment_id=exp_id
                )
            if not records or not records[0].get("download_link"):
                raise ValueError(f"experiment {exp_id}: the Allen API lists no NWB file")
            stream_to_file(
                boc.api.api_url + records[0]["download_link"],
                path,
                progress=progress,
                desc=f"[{i}/{len(todo)}] {exp_id}.nwb",
            )
            status = "downloaded"
            _check_nwb(path, exp_id)
        fetched.append(
            FetchedFile(
                exp_id,
                int(exp["experiment_container_id"]),
                exp["session_type"],
                path,
                os.path.getsize(path),
                status,
            )
        )
    return fetched


def _check_nwb(path: str, experiment_id: int) -> None:
    """Opens a new file with allensdk's reader and checks its experiment id."""
    from allensdk.core.brain_observatory_nwb_data_set import BrainObservatoryNwbDataSet

    found = BrainObservatoryNwbDataSet(path).get_metadata().get("ophys_experiment_id")
    if found != experiment_id:
        raise ValueError(f"{path}: general/session_id is {found}, expected {experiment_id}")


# --- Command line --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but bad arguments exit with 1: exit code 2 means 'servers unreachable' here."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m quantformer_jax.allen.download",
        description="Fetch Allen Brain Observatory experiment NWB files into an allensdk cache "
        "directory (resumable), or list what a cache directory holds (--list, offline).",
    )
    p.add_argument("--cache-dir", required=True, help="allensdk cache directory (manifest.json)")
    p.add_argument(
        "--containers",
        nargs="+",
        type=int,
        metavar="ID",
        help="experiment container ids (default: the 11 evaluation containers of the original "
        "QuantFormer for downloads; every container with files for --list)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--stimuli",
        nargs="+",
        metavar="NAME",
        help=f"sessions showing any of these stimuli (default: {' '.join(DEFAULT_STIMULI)}, "
        "what the configs train on)",
    )
    which.add_argument(
        "--session-types", nargs="+", choices=SESSION_TYPES, metavar="TYPE", help="session types"
    )
    p.add_argument("--list", action="store_true", help="list the cache offline; download nothing")
    p.add_argument(
        "--base-uri", help=f"Allen API server, e.g. a mirror (default: http://{API_HOST})"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.list:
            containers, experiments = read_index(args.cache_dir)
            print(format_listing(args.cache_dir, containers, experiments, args.containers))
            return 0
        stimuli = args.stimuli or (None if args.session_types else list(DEFAULT_STIMULI))
        fetched = fetch(
            args.cache_dir,
            args.containers or sorted(constants.CONTAINERS),
            stimuli=stimuli,
            session_types=args.session_types,
            base_uri=args.base_uri,
            progress=not args.no_progress,
        )
    except ServerUnreachableError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except DownloadIncompleteError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except urllib.error.HTTPError as e:  # reached, but the server refused or failed
        print(
            f"error: the Allen server answered HTTP {e.code} {e.reason} for {e.url}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    new = [f for f in fetched if f.status == "downloaded"]
    total = sum(f.size_bytes for f in fetched)
    print(
        f"{args.cache_dir}: {len(fetched)} NWB files ready ({human_size(total)}); "
        f"{len(new)} downloaded now, {len(fetched) - len(new)} already present"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
