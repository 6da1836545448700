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
ALLEN_READY = REPO / ".venv-allen" / ".installed"  # written by `make allen-env` on success
CLI = ["-m", "quantformer_jax.allen.download"]

needs_allen_env = pytest.mark.skipif(
    not ALLEN_READY.exists(),
    reason=f"allensdk environment not built: {ALLEN_READY} missing (run `make allen-env`)",
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


# In .venv-allen: the simulated observatory is served over HTTP by a local server and a fake
# Allen API points at it; the tool fetches two containers into a new cache (resuming one partial
# file), fetches again (nothing to do), rejects an unknown container and lists the cache.
_FETCH_SCRIPT = r"""
import functools, http.server, json, os, sys, threading
from allensdk.api.queries.brain_observatory_api import BrainObservatoryApi
from quantformer_jax.allen import download

source, dest, nothing = sys.argv[1:4]
files = os.path.join(source, "ophys_experiment_data")
requests = []

class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        requests.append([self.path, self.headers.get("Range")])
        super().do_GET()
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(
    ("127.0.0.1", 0), functools.partial(Handler, directory=files))
threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()

queries = []

class FakeApi(BrainObservatoryApi):
    # The Allen API's answers, taken from the source cache's raw records.
    def template_query(self, template_name, entry_name, **kwargs):
        queries.append(entry_name)
        if entry_name == "all_eye_mapping_files":
            return []
        if entry_name == "ophys_experiment_data":
            return [{"download_link": "/%d.nwb" % kwargs["ophys_experiment_id"]}]
        index = {"experiment_container": "experiment_containers.json",
                 "ophys_experiment_by_ids": "ophys_experiments.json"}[entry_name]
        return json.load(open(os.path.join(source, index)))

api = FakeApi(base_uri="http://127.0.0.1:%d" % server.server_address[1])
os.makedirs(os.path.join(dest, "ophys_experiment_data"))  # a new cache: no manifest, no index
exps = json.load(open(os.path.join(source, "ophys_experiments.json")))
(c1, e1), (c2, e2), (c3, e3) = sorted((e["experiment_container_id"], e["id"]) for e in exps)
with open(os.path.join(files, "%d.nwb" % e2), "rb") as f:
    head = f.read(1000)
with open(os.path.join(dest, "ophys_experiment_data", "%d.nwb.part" % e2), "wb") as f:
    f.write(head)
out = {"ids": [c1, e1, c2, e2, c3, e3]}
first = download.fetch(dest, [c1, c2], stimuli=["drifting_gratings"], api=api, progress=False)
out["first"] = [[f.experiment_id, f.status] for f in first]
out["identical"] = all(
    open(f.path, "rb").read() == open(os.path.join(files, "%d.nwb" % f.experiment_id), "rb").read()
    for f in first)
out["requests"] = list(requests)
again = download.fetch(dest, [c1, c2], session_types=["three_session_A"], api=api, progress=False)
out["again"] = [[f.experiment_id, f.status] for f in again]
out["requests_after_again"] = len(requests)
out["queries"] = queries
try:
    download.fetch(dest, [c1, 123], api=api, progress=False)
except ValueError as e:
    out["unknown"] = str(e)
print(json.dumps(out))
print("LISTING")
sys.stdout.flush()
download.main(["--cache-dir", dest, "--list", "--containers", str(c1), str(c2), str(c3)])
print("NOTHING", download.main(["--cache-dir", nothing, "--list"]))
"""


@needs_allen_env
def test_fetch_resumes_skips_complete_files_and_lists_the_cache(mini_observatory, tmp_path):
    run = subprocess.run(
        [str(ALLEN_PYTHON), "-c", _FETCH_SCRIPT, str(mini_observatory), str(tmp_path / "cache"),
         str(tmp_path / "nothing")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    result, _, listed = run.stdout.partition("LISTING")
    out = json.loads(result)
    c1, e1, c2, e2, c3, e3 = out["ids"]
    assert out["first"] == [[e1, "downloaded"], [e2, "downloaded"]]
    assert out["identical"]
    # e2 continued from the 1000 bytes already there; e1 started from scratch.
    assert out["requests"] == [[f"/{e1}.nwb", None], [f"/{e2}.nwb", "bytes=1000-"]]
    assert out["again"] == [[e1, "present"], [e2, "present"]]
    assert out["requests_after_again"] == 2  # nothing downloaded twice
    # The index was fetched once and then read from the cache (allensdk's lazy strategy).
    assert out["queries"].count("experiment_container") == 1
    assert out["queries"].count("ophys_experiment_by_ids") == 1
    assert "container(s) [123]" in out["unknown"]
    lines = listed.strip().splitlines()
    size = sum(
        (mini_observatory / "ophys_experiment_data" / f"{e}.nwb").stat().st_size for e in (e1, e2)
    )
    assert lines[0].endswith(
        f"3 containers, 3 experiments in the index; 2 NWB files present "
        f"({listing.human_size(size)}), 0 partial downloads"
    )
    assert [ln.split()[:2] for ln in lines[1:7]] == [
        ["container", str(c1)],
        [str(e1), "three_session_A"],
        ["container", str(c2)],
        [str(e2), "three_session_A"],
        ["container", str(c3)],
        [str(e3), "three_session_A"],
    ]
    assert lines[6].endswith("not downloaded")
    assert lines[-1] == "NOTHING 1"
    assert "no manifest.json" in run.stderr
