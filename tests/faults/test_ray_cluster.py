"""Promise: a sweep on a real two-node Ray cluster survives losing a worker node that cannot see the sweep directory.

The head node (`ray.cluster_utils.Cluster`, where the driver runs) sees the sweep directory. The second node is
a `ray start` process in its own mount namespace with an empty tmpfs over the directory that holds the sweep,
so it really cannot see it and trains in its own temporary directory. When it has written a checkpoint of its
run, every process in that namespace gets SIGKILL; Ray resubmits the lost task, the head node trains it, and
every run directory equals the one a local sweep writes. Nothing leaves the machine (the nodes talk over its
own address: Ray rewrites 127.0.0.1 in an address to that one, so a node bound to loopback is unreachable).
Skipped where Ray, root or mount namespaces are not available, or where Ray cannot start a node (see start_head).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from faults.conftest import in_child, tiny_sweep, training_files

# Node loss noticed in ~2 s, not ~30.
RAY_SYSTEM_CONFIG = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 3}


class RayDidNotStart(Exception):
    """Ray could not start a node here: an environment limit, reported as a skip, not a failure of the sweep."""


def start_head():
    """The head node. A raylet gives its Python agents a fixed 15 s to report their ports, which a 2-core
    machine under heavy load from other jobs can overrun (the raylet aborts): then the case is skipped."""
    from ray.cluster_utils import Cluster

    try:
        return Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "include_dashboard": False, "include_log_monitor": False, "_system_config": RAY_SYSTEM_CONFIG},
        )
    except Exception as exc:
        raise RayDidNotStart(f"Ray's head node did not start ({exc}); load average {os.getloadavg()[0]:.1f}") from None


def namespace_processes(ns: str) -> list[int]:
    """Pids whose mount namespace is `ns` (only the hidden node's processes: the test made that namespace)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "mnt") == ns:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def kill_namespace(ns: str) -> None:
    for _ in range(20):
        pids = namespace_processes(ns)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def sweep_on_cluster(spec, sweep_dir: Path, node_tmp: Path, log: Path) -> None:
    """In a forked child: head node + hidden node, the sweep, the kill; always tears both nodes down."""
    import ray

    from grokking.experiments import load_sweep, run_sweep
    from grokking.experiments.ray_executor import RayExecutor

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    try:
        cluster = start_head()
    except RayDidNotStart as exc:
        (node_tmp / "did-not-start").write_text(str(exc))
        return
    hidden, ns = None, None
    try:
        script = (
            f"mount -t tmpfs -o size=64k tmpfs {sweep_dir.parent} && exec {Path(sys.executable).parent / 'ray'} start "
            f"--address={cluster.address} --num-cpus=1 --block --disable-usage-stats"
        )
        env = {**os.environ, "TMPDIR": str(node_tmp), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        for _ in range(2):  # the same 15 s agent limit as the head's (see start_head)
            with open(log, "ab") as out:
                hidden = subprocess.Popen(
                    ["unshare", "--mount", "--propagation", "private", "sh", "-c", script], stdout=out, stderr=out, env=env, start_new_session=True
                )
            deadline = time.monotonic() + 120
            while len([n for n in cluster.global_state.node_table() if n["Alive"]]) < 2 and hidden.poll() is None:
                assert time.monotonic() < deadline, "the hidden node did not join"
                time.sleep(0.2)
            if hidden.poll() is None:
                break
        else:
            (node_tmp / "did-not-start").write_text(f"the second Ray node did not start in 2 tries; load average {os.getloadavg()[0]:.1f}")
            return
        ray.init(address=cluster.address, log_to_driver=False)  # after the second node: its agents start on a quieter machine
        ns = os.readlink(f"/proc/{hidden.pid}/ns/mnt")
        assert ns != os.readlink("/proc/self/ns/mnt")

        def kill_when_hidden_node_has_a_checkpoint() -> None:
            while not any(node_tmp.glob("grokking-run-*/*/checkpoints/step_0000020.safetensors")):
                time.sleep(0.05)
            kill_namespace(ns)
            (node_tmp / "killed").touch()

        killer = threading.Thread(target=kill_when_hidden_node_has_a_checkpoint, daemon=True)
        killer.start()
        run_sweep(spec, sweep_dir, executor=RayExecutor(num_cpus=1), progress=False)
        sweep = load_sweep(sweep_dir)
        assert sweep.counts()["done"] == len(sweep.runs), sweep.table()
        assert (node_tmp / "killed").is_file(), "the hidden node was never killed mid-run"
    finally:
        if ns is not None:
            kill_namespace(ns)
        if hidden is not None:
            hidden.kill()
            hidden.wait()
        ray.shutdown()
        cluster.shutdown()


def test_sweep_survives_losing_a_node_that_cannot_see_the_sweep_directory(tmp_path: Path) -> None:
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (pip install 'grokking[ray]')")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("hiding the sweep directory from the second node needs root and unshare(1)")
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", f"mount -t tmpfs tmpfs {tmp_path}"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount in a new mount namespace here ({probe.stderr.strip()})")
    from grokking.experiments import run_sweep

    spec = tiny_sweep({"weight_decay": [1.0, 0.5]}, [0], steps=200)
    local, node_tmp = tmp_path / "local" / "sweep", tmp_path / "node-tmp"
    sweep_dir = tmp_path / "shared" / "sweep"
    node_tmp.mkdir()
    sweep_dir.parent.mkdir()  # the hidden node mounts an empty tmpfs over it
    assert in_child(lambda: sweep_on_cluster(spec, sweep_dir, node_tmp, tmp_path / "hidden-node.log")) == 0
    if (node_tmp / "did-not-start").is_file():
        pytest.skip((node_tmp / "did-not-start").read_text())
    assert in_child(lambda: run_sweep(spec, local, progress=False)) == 0
    names = sorted(p.name for p in (local / "runs").iterdir())
    assert names == sorted(p.name for p in (sweep_dir / "runs").iterdir()) and len(names) == 2
    for name in names:
        assert training_files(sweep_dir / "runs" / name) == training_files(local / "runs" / name), name
