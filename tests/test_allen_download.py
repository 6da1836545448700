"""Tests of the Allen download tool: resumable transfer, selection, listing, CLI and exit codes.

The transfer, selection and listing code is pure python and runs here in the main venv against a
local HTTP server. The command line itself runs in the allensdk environment (.venv-allen) through
a subprocess; those tests are skipped, with the reason, when that environment is not built.
"""

import http.server
import importlib.util
import json
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from quantformer_jax import constants
from quantformer_jax.allen import download, listing

REPO = Path(__file__).resolve().parents[1]
ALLEN_PYTHON = REPO / ".venv-allen" / "bin" / "python"
CLI = ["-m", "quantformer_jax.allen.download"]

needs_allen_env = pytest.mark.skipif(
    not ALLEN_PYTHON.exists(),
    reason=f"allensdk environment not built: {ALLEN_PYTHON} missing (run `make allen-env`)",
)


# --- A local file server with optional Range support and truncation ----------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        server = self.server
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        server.ranges.append(rng)
        start = 0
        if rng and server.honour_range:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if server.truncate is not None:  # announce everything, send less, hang up
            payload = payload[: server.truncate]
        self.wfile.write(payload)

    def log_message(self, *args):
        del args


@pytest.fixture
def file_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files, server.ranges, server.honour_range, server.truncate = {}, [], True, None
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


BODY = bytes(range(256)) * 4000  # 1 MB, not a multiple of the read chunk


# --- Resumable transfer ---------------------------------------------------------------------------


def test_stream_to_file_downloads_through_a_part_file(file_server, tmp_path):
    file_server.files["/f.nwb"] = BODY
    dest = tmp_path / "f.nwb"
    size = download.stream_to_file(file_server.url + "/f.nwb", str(dest), progress=False)
    assert size == len(BODY)
    assert dest.read_bytes() == BODY
    assert not (tmp_path / "f.nwb.part").exists()
    assert file_server.ranges == [None]


def test_stream_to_file_resumes_a_partial_download_with_range(file_server, tmp_path):
    file_server.files["/f.nwb"] = BODY
    dest = tmp_path / "f.nwb"
    (tmp_path / "f.nwb.part").write_bytes(BODY[:300_001])
    download.stream_to_file(file_server.url + "/f.nwb", str(dest), progress=False)
    assert file_server.ranges == ["bytes=300001-"]
    assert dest.read_bytes() == BODY


def test_stream_to_file_restarts_when_the_server_ignores_range(file_server, tmp_path):
    file_server.files["/f.nwb"] = BODY
    file_server.honour_range = False
    (tmp_path / "f.nwb.part").write_bytes(b"stale bytes that must not stay in front")
    download.stream_to_file(file_server.url + "/f.nwb", str(tmp_path / "f.nwb"), progress=False)
    assert (tmp_path / "f.nwb").read_bytes() == BODY


def test_stream_to_file_restarts_when_the_part_file_is_already_too_long(file_server, tmp_path):
    file_server.files["/f.nwb"] = BODY[:1000]
    (tmp_path / "f.nwb.part").write_bytes(b"x" * 5000)  # server answers 416
    download.stream_to_file(file_server.url + "/f.nwb", str(tmp_path / "f.nwb"), progress=False)
    assert (tmp_path / "f.nwb").read_bytes() == BODY[:1000]


def test_stream_to_file_keeps_the_part_file_when_the_transfer_stops_early(file_server, tmp_path):
    file_server.files["/f.nwb"] = BODY
    file_server.truncate = 400_000
    dest = tmp_path / "f.nwb"
    with pytest.raises(download.DownloadIncompleteError, match="received 400000 of 1024000"):
        download.stream_to_file(file_server.url + "/f.nwb", str(dest), progress=False)
    assert not dest.exists()  # an incomplete file never takes the final name
    assert (tmp_path / "f.nwb.part").read_bytes() == BODY[:400_000]
    file_server.truncate = None  # the next run resumes where it stopped
    download.stream_to_file(file_server.url + "/f.nwb", str(dest), progress=False)
    assert file_server.ranges[-1] == "bytes=400000-"
    assert dest.read_bytes() == BODY


def test_unresolvable_host_is_reported_as_unreachable(tmp_path):
    with pytest.raises(download.ServerUnreachableError, match="could not be resolved") as e:
        download.stream_to_file("http://allen.invalid/f.nwb", str(tmp_path / "f"), progress=False)
    assert "allen.invalid" in str(e.value)
    assert "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())


def test_refused_connection_is_reported_as_unreachable(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(download.ServerUnreachableError, match="refused"):
        download.stream_to_file(f"http://127.0.0.1:{port}/f", str(tmp_path / "f"), progress=False)


def test_http_errors_are_not_called_unreachable(file_server, tmp_path):
    with pytest.raises(download.urllib.error.HTTPError):
        download.stream_to_file(file_server.url + "/absent.nwb", str(tmp_path / "f"))


# --- Selection and listing ---------------------------------------------------------------------


def test_check_selection_groups_by_container_and_names_missing_ones():
    exps = [
        {"id": 1, "experiment_container_id": 10, "session_type": "three_session_A"},
        {"id": 2, "experiment_container_id": 10, "session_type": "three_session_B"},
        {"id": 3, "experiment_container_id": 20, "session_type": "three_session_A"},
    ]
    groups = download.check_selection(exps, [20, 10], "stimuli ['drifting_gratings']")
    assert {c: [e["id"] for e in v] for c, v in groups.items()} == {20: [3], 10: [1, 2]}
    with pytest.raises(ValueError, match=r"container\(s\) \[30, 40\]"):
        download.check_selection(exps, [10, 40, 30], "stimuli ['drifting_gratings']")


def _cached(tmp_path, exp_id, container_id, session, state):
    path = tmp_path / f"{exp_id}.nwb"
    if state == "present":
        path.write_bytes(b"x" * 3 * 1024 * 1024)
    return listing.CachedExperiment(
        exp_id,
        container_id,
        session,
        str(path),
        present=state == "present",
        size_bytes=3 * 1024 * 1024 if state == "present" else 0,
        partial_bytes=2048 if state == "partial" else 0,
    )


def test_format_listing_summarises_and_shows_containers_with_files(tmp_path):
    containers = [
        {"id": 10, "targeted_structure": "VISp", "imaging_depth": 175, "cre_line": "Cux2-CreERT2"},
        {
            "id": 20,
            "targeted_structure": "VISl",
            "imaging_depth": 275,
            "cre_line": "Rorb-IRES2-Cre",
        },
        {
            "id": 30,
            "targeted_structure": "VISal",
            "imaging_depth": 375,
            "cre_line": "Scnn1a-Tg3-Cre",
        },
    ]
    exps = [
        _cached(tmp_path, 1, 10, "three_session_B", "present"),
        _cached(tmp_path, 2, 10, "three_session_A", "partial"),
        _cached(tmp_path, 3, 20, "three_session_A", "present"),
        _cached(tmp_path, 4, 30, "three_session_A", "missing"),
    ]
    text = listing.format_listing("CACHE", containers, exps)
    lines = text.splitlines()
    assert lines[0] == (
        "CACHE: 3 containers, 4 experiments in the index; 2 NWB files present (6.0 MiB), "
        "1 partial downloads"
    )
    assert lines[1] == "container 10  VISp  175 um  Cux2-CreERT2"
    assert (
        lines[2].split()[:2] == ["2", "three_session_A"] and "partial download (2.0 KiB" in lines[2]
    )
    assert lines[3].split()[:3] == ["1", "three_session_B", "3.0"]
    assert "container 30" not in text  # nothing of it is in the cache
    only_30 = listing.format_listing("CACHE", containers, exps, container_ids=[30])
    assert only_30.splitlines()[-1].split() == ["4", "three_session_A", "not", "downloaded"]
    with pytest.raises(ValueError, match=r"\[99\] are not in the cache index"):
        listing.format_listing("CACHE", containers, exps, container_ids=[99])


# --- Command line ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--list"],  # no --cache-dir
        ["--cache-dir", "d", "--session-types", "three_session_D"],
        [
            "--cache-dir",
            "d",
            "--stimuli",
            "drifting_gratings",
            "--session-types",
            "three_session_A",
        ],
        ["--cache-dir", "d", "--containers", "511507650", "abc"],
    ],
)
def test_bad_arguments_exit_with_1_not_the_network_code(argv, capsys):
    with pytest.raises(SystemExit) as e:
        download.build_parser().parse_args(argv)
    assert e.value.code == download.EXIT_BAD_INPUT != download.EXIT_UNREACHABLE
    assert "error:" in capsys.readouterr().err


def test_default_containers_are_the_eleven_evaluation_containers():
    assert sorted(constants.CONTAINERS) == [
        511507650, 511510667, 511510675, 511510699, 511510718, 511510779,
        511510855, 511510989, 526481129, 536323956, 543677425,
    ]  # fmt: skip


def test_running_in_the_wrong_environment_says_how_to_fix_it(tmp_path, capsys):
    if importlib.util.find_spec("allensdk") is not None:
        pytest.skip("allensdk is importable in this environment")
    (tmp_path / "manifest.json").write_text("{}")
    for name in listing.INDEX_FILES:
        (tmp_path / name).write_text("[]")
    assert download.main(["--cache-dir", str(tmp_path), "--list"]) == download.EXIT_BAD_INPUT
    assert "make allen-env" in capsys.readouterr().err


def _run_cli(*args, cwd):
    return subprocess.run(
        [str(ALLEN_PYTHON), *CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@needs_allen_env
def test_cli_fails_cleanly_when_the_servers_cannot_be_reached(tmp_path):
    out = _run_cli(
        "--cache-dir", str(tmp_path / "c"), "--base-uri", "http://allen.invalid", cwd=tmp_path
    )
    assert out.returncode == download.EXIT_UNREACHABLE, out.stderr
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot reach the Allen Brain Observatory")
    assert "allen.invalid" in err[0] and "could not be resolved" in err[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "c" / "ophys_experiment_data").exists()


def _write_index(root: Path, experiments: dict[int, tuple[int, str]]) -> None:
    """Index JSONs in the raw API format of ALLEN_FORMAT.md 2.3: exp id -> (container, session)."""
    donor = {
        "external_donor_name": "000001",
        "date_of_birth": "2015-12-18T00:00:00Z",
        "conditions": [],
        "transgenic_lines": [
            {"name": "Cux2-CreERT2", "transgenic_line_type_name": "driver"},
            {"name": "Camk2a-tTA", "transgenic_line_type_name": "driver"},
            {"name": "Ai93(TITL-GCaMP6f)", "transgenic_line_type_name": "reporter"},
        ],
    }

    def record(cid):
        return {
            "id": cid,
            "imaging_depth": 175,
            "failed": False,
            "targeted_structure": {"acronym": "VISp"},
            "specimen": {"name": f"Cux2-CreERT2;Camk2a-tTA;Ai93-{cid}", "donor": donor},
        }

    root.mkdir(parents=True, exist_ok=True)
    containers = sorted({c for c, _ in experiments.values()})
    (root / "experiment_containers.json").write_text(json.dumps([record(c) for c in containers]))
    exps = [
        record(cid)
        | {
            "id": eid,
            "experiment_container_id": cid,
            "stimulus_name": session,
            "date_of_acquisition": "2016-03-31T09:52:09Z",
            "experiment_container": {"failed": False},
        }
        for eid, (cid, session) in experiments.items()
    ]
    (root / "ophys_experiments.json").write_text(json.dumps(exps))


# allensdk writes the manifest of a new cache directory itself; then the tool lists it.
_LIST_SCRIPT = """
import sys
from allensdk.core.brain_observatory_cache import BrainObservatoryCache
from quantformer_jax.allen.download import main
if sys.argv[2] == "make-manifest":
    BrainObservatoryCache(manifest_file=sys.argv[1] + "/manifest.json")
sys.exit(main(["--cache-dir", sys.argv[1], "--list"]))
"""


@needs_allen_env
def test_cli_lists_a_cache_offline(tmp_path):
    root = tmp_path / "cache"
    _write_index(
        root,
        {
            901: (900, "three_session_A"),
            902: (900, "three_session_B"),
            911: (910, "three_session_A"),
            921: (920, "three_session_A"),
        },
    )
    data = root / "ophys_experiment_data"
    data.mkdir()
    (data / "901.nwb").write_bytes(b"x" * 5000)
    (data / "911.nwb.part").write_bytes(b"x" * 100)
    out = subprocess.run(
        [str(ALLEN_PYTHON), "-c", _LIST_SCRIPT, str(root), "make-manifest"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].endswith(
        "3 containers, 4 experiments in the index; 1 NWB files present (4.9 KiB), "
        "1 partial downloads"
    )
    assert [ln.split()[:2] for ln in lines[1:]] == [
        ["container", "900"],
        ["901", "three_session_A"],
        ["902", "three_session_B"],
        ["container", "910"],
        ["911", "three_session_A"],
    ]
    assert "not downloaded" in lines[3] and "partial download" in lines[5]
    # Listing reads only: no network (no --base-uri needed), nothing written.
    assert sorted(p.name for p in data.iterdir()) == ["901.nwb", "911.nwb.part"]
    out = _run_cli("--cache-dir", str(tmp_path / "nothing"), "--list", cwd=tmp_path)
    assert out.returncode == download.EXIT_BAD_INPUT
    assert "no manifest.json" in out.stderr
