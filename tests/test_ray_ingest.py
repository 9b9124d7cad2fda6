"""`chunkless ingest --engine ray` on a real two-node Ray cluster on loopback, against a local ingest.

The cluster is two `ray start` processes on this machine (a head and a node that joins it), started
once for the module and stopped by process group (never `ray stop`, which would stop every Ray on the
machine). Each run is compared with a single-process ingest of the same files: headers, segment points,
vectors, the report's failures, and 10 searches. The fault tests kill, with SIGKILL, an embedding
actor's worker process mid-run (Ray restarts it and runs its batch again) and, separately, the driver
(the command is then run again); both watch the driver's "stored" log lines, no sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from indexer.embedders import HFTokenEmbedder
from indexer.ingest import ingest
from indexer.store import open_store
from retriever.search import Retriever
from schemas.errors import EXIT_FILES_FAILED, StoreBusyError
from schemas.models import IngestReport
from schemas.settings import Settings
from tests.support import DOCS, REPO
from tests.test_ingest_jobs import assert_complete, assert_same, make_corpus, snapshot

pytest.importorskip(
    "ray", reason="Ray is not installed: pip install -e '.[ray]' (scripts/setup.sh installs it with the dev extra)"
)

BATCH_TOKENS = 512  # the long file below is embedded part by part, through the writer actor
QUERIES = [
    "What makes the dough rise?",
    "How long is a loaf baked?",
    "How many squares does a chess board have?",
    "Where does magma reach?",
    "How does a steam engine turn heat into work?",
    "Who were the Normans?",
    "What is a force?",
    "glacier and volcano near the harbour",
    "the parliament of the tundra",
    "copper lantern in the orchard",
]
# what Ray starts that is not asked for: every port its own, so another Ray on the machine is no matter
PORT_FLAGS = (
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHUNKLESS_", "RAY_"))}
    # no token authentication: this cluster listens for this machine's own processes, for one module
    env |= {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return env | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def start_node(args: list[str]) -> subprocess.Popen[bytes]:
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--block", "--disable-usage-stats", *args]
    cmd += ["--node-ip-address", "127.0.0.1", "--num-gpus", "0", "--object-store-memory", str(80 * 2**20)]
    for flag in PORT_FLAGS:
        cmd += [flag, str(free_port())]
    # a session of its own: the node and everything it starts are stopped as one process group
    return subprocess.Popen(cmd, env=ray_env(), start_new_session=True, stdout=subprocess.DEVNULL)


@dataclass
class Cluster:
    address: str
    nodes: list[int]  # the `ray start` processes' ids


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head (2 CPUs) and a second node (1 CPU) on loopback."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="ckray")  # short: Ray's socket paths live under it
    head_flags = ["--head", "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false", "--temp-dir", temp]
    head = start_node([*head_flags, "--ray-client-server-port", str(free_port()), "--dashboard-port", str(free_port())])
    nodes = [head]
    try:
        # `ray status` returns once the head answers; then the second node joins it
        wait_for(lambda: run_ray(["status", "--address", address]).returncode == 0, "the Ray head to start")
        nodes.append(start_node(["--address", address, "--num-cpus", "1"]))
        wait_for(lambda: "2 node" in nodes_line(address), "the second Ray node to join")
        yield Cluster(address, [p.pid for p in nodes])
    finally:
        for p in nodes:
            stop(p)
        shutil.rmtree(temp, ignore_errors=True)


def run_ray(args: list[str]) -> subprocess.CompletedProcess[str]:
    ray = str(Path(sys.executable).parent / "ray")
    return subprocess.run([ray, *args], env=ray_env(), capture_output=True, text=True, timeout=60)


def nodes_line(address: str) -> str:
    """How many nodes are alive, from `ray status` ("N node(s)" counted from its Active section)."""
    out = run_ray(["status", "--address", address]).stdout
    active = out.split("Active:", 1)[-1].split("Pending:", 1)[0]
    n = sum(1 for line in active.splitlines() if line.strip().startswith("1 node_"))
    return f"{n} node"


def wait_for(check: Any, what: str, within_s: float = 90.0) -> None:
    """Call `check` (each call a `ray status` round trip of seconds) until it holds; fail past `within_s`."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")


def stop(p: subprocess.Popen[bytes]) -> None:
    """Stop one node and everything it started (its process group) at once: nothing of it is kept."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)  # SIGTERM would drain for 30 s first
    p.wait()


def make_files(root: Path) -> Path:
    """Small text files, the demo corpus (PDF, Markdown, text), a long file, and a file that fails."""
    corpus = make_corpus(root, 6)
    for name in ("force.txt", "normans.md", "steam_engine.pdf"):
        (corpus / name).write_bytes((REPO / "demo" / "corpus" / name).read_bytes())
    for name, text in DOCS.items():
        (corpus / f"{name}.md").write_text(f"# {name.title()}\n\n{text}\n")
    (corpus / "long.txt").write_text(" ".join(f"{DOCS['volcano']} Part {i}." for i in range(30)))
    (corpus / "empty.txt").write_text("")  # refused as empty, by both engines, in the same words
    return corpus


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, minilm: HFTokenEmbedder) -> tuple[Path, Settings, IngestReport]:
    """The corpus and a single-process ingest of it: what every Ray run must end equal to."""
    root = tmp_path_factory.mktemp("ray")
    corpus = make_files(root)
    s = store_settings(root / "local")
    report = ingest([corpus], s, embedder=minilm)
    assert report.documents == 13 and len(report.failures) == 1
    return corpus, s, report


def store_settings(store: Path) -> Settings:
    return Settings(store_path=store, device="cpu", storage_dtype="float32", batch_tokens=BATCH_TOKENS)


def searches(s: Settings, minilm: HFTokenEmbedder) -> list[list[tuple[str, int, int, float]]]:
    with Retriever(s, embedder=minilm) as r:
        return [[(x.doc_id, x.start, x.end, round(x.score, 4)) for x in r.search(q).spans] for q in QUERIES]


def driver(corpus: Path, store: Path, address: str, *args: str, sdk: bool = False) -> subprocess.Popen[str]:
    """The CLI (or, with `sdk`, `ray_ingest` with one document per actor call) as its own driver process."""
    env = ray_env() | {"CHUNKLESS_DEVICE": "cpu", "CHUNKLESS_STORAGE_DTYPE": "float32"}
    env["CHUNKLESS_BATCH_TOKENS"] = str(BATCH_TOKENS)
    if sdk:
        code = (
            "import logging, sys; from pathlib import Path; from schemas.settings import Settings; "
            "from indexer.distributed import RayOptions, ray_ingest; "
            "logging.basicConfig(format='%(name)s: %(message)s'); "
            "logging.getLogger('indexer.ingest').setLevel('INFO'); "
            f"r = ray_ingest([Path({str(corpus)!r})], Settings(store_path=Path({str(store)!r})), "
            f"RayOptions(address={address!r}, actors=1, batch_docs=1)); "
            "sys.exit(len(r.failures))"
        )
        cmd = [sys.executable, "-c", code]
    else:
        cmd = [sys.executable, "-m", "retriever.cli", "ingest", str(corpus), "--store", str(store), "--quiet"]
        cmd += ["--engine", "ray", "--ray-address", address, *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def until_stored(proc: subprocess.Popen[str], n: int) -> list[str]:
    """The driver's log lines up to its `n`-th stored document (all of them if it ends first)."""
    assert proc.stderr is not None
    lines, stored = [], 0
    for line in proc.stderr:
        lines.append(line)
        if "indexer.ingest: stored " in line:
            stored += 1
            if stored == n:
                break
    return lines


def descendants(root: int) -> dict[int, str]:
    """Every process under `root` (pid -> its command line), from /proc."""
    children: dict[int, list[int]] = {}
    cmdlines: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdlines[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = {}, [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out[c] = cmdlines.get(c, "")
            todo.append(c)
    return out


def store_released(settings: Settings) -> bool:
    """Whether the embedded store opens: a killed writer's process may outlive its actor's title briefly."""
    try:
        open_store(settings.store).close()
    except StoreBusyError:
        return False
    return True


def cluster_processes(cluster: Cluster, name: str) -> list[int]:
    """This module's Ray worker processes whose title holds `name` (only under the nodes it started)."""
    return [pid for node in cluster.nodes for pid, cmd in descendants(node).items() if name in cmd]


def test_two_nodes_equal_a_local_ingest(
    cluster: Cluster, reference: tuple[Path, Settings, IngestReport], minilm: HFTokenEmbedder, tmp_path: Path
) -> None:
    corpus, local, local_report = reference
    s = store_settings(tmp_path / "ray")
    report_file = tmp_path / "report.json"
    proc = driver(corpus, s.store.store_path, cluster.address, "--actors", "2", "--report", str(report_file))
    out = "".join(until_stored(proc, -1))
    assert proc.wait() == EXIT_FILES_FAILED, out  # empty.txt failed, as in the local run
    rep = json.loads(report_file.read_text())
    assert rep["documents"] == local_report.documents and rep["tokens"] == local_report.tokens
    # the driver builds MaxSim's int8 copy once the writers are done, as a local ingest does
    assert rep["index_seconds"] > 0 and local_report.index_seconds > 0 and rep["index_note"] is None
    assert [(f["path"], f["reason"]) for f in rep["failures"]] == [(f.path, f.reason) for f in local_report.failures]
    assert "stored " in out and "tokens/s" in out  # progress: each stored file, with the rate
    assert_same(snapshot(s), snapshot(local))
    assert searches(s, minilm) == searches(local, minilm)

    # the same command again: every file unchanged (the content hash), Ray not even needed
    again = driver(corpus, s.store.store_path, cluster.address)
    out = "".join(until_stored(again, -1))
    assert again.wait() == EXIT_FILES_FAILED, out
    assert "0 documents" in out and "13 unchanged" in out


def test_a_killed_embedding_worker_is_retried_and_the_store_ends_exact(
    cluster: Cluster, reference: tuple[Path, Settings, IngestReport], tmp_path: Path
) -> None:
    corpus, local, _ = reference
    s = store_settings(tmp_path / "ray")
    proc = driver(corpus, s.store.store_path, cluster.address, sdk=True)
    lines = until_stored(proc, 2)
    workers = cluster_processes(cluster, "EmbedActor")
    assert len(workers) == 1, "".join(lines)  # one actor: the run cannot go on without it coming back
    os.kill(workers[0], signal.SIGKILL)
    assert proc.stderr is not None
    out = "".join(lines) + proc.stderr.read()
    assert proc.wait() == 1, out  # one failure: empty.txt; no file failed for the killed worker
    assert out.count("indexer.ingest: stored ") == 13  # each file reported once, however often it ran
    assert_same(snapshot(s), snapshot(local))


def test_a_killed_driver_then_the_command_again_ends_as_one_uninterrupted_run(
    cluster: Cluster, reference: tuple[Path, Settings, IngestReport], tmp_path: Path
) -> None:
    corpus, local, _ = reference
    s = store_settings(tmp_path / "ray")
    proc = driver(corpus, s.store.store_path, cluster.address, sdk=True)
    until_stored(proc, 2)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    # the job's actors go with their driver; the writer must be gone before the store can be opened again
    wait_for(lambda: not cluster_processes(cluster, "StoreWriter"), "the killed job's writer to stop")
    wait_for(lambda: store_released(s), "the killed writer's lock on the store to go")
    first = assert_complete(s)  # whatever a search can see is whole
    assert 2 <= first < 13

    again = driver(corpus, s.store.store_path, cluster.address)  # the command, as a user runs it again
    out = "".join(until_stored(again, -1))
    assert again.wait() == EXIT_FILES_FAILED, out
    assert f"{first} unchanged" in out
    assert_same(snapshot(s), snapshot(local))
