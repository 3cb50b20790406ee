"""The same run on 1 device, on 8 simulated devices (FSDP over data=4 x tensor parallel over
model=2), and as two ``jax.distributed`` processes gives the same loss trajectory.

Tolerance: 1e-4 nats per step over 12 steps. Sharding changes only the order of float32
reductions (measured differences ~2e-6); a wrong sharding (a missing all-reduce, a double-counted
shard) changes the loss at the first step by far more.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from speedrun_helpers import REPO, last_json_line, run_python, tiny_config

from marin_optim.speedrun import results as res
from marin_optim.speedrun import run_speedrun

TOLERANCE = 1e-4


def losses(run_dir) -> list[float]:
    return [r["loss"] for r in res.read_metrics(os.path.join(run_dir, res.METRICS)) if "loss" in r]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("one") / "run"
    info = run_speedrun(
        tiny_config(run_dir, "--train.mesh.data", "1", "--train.checkpoint_interval", "0"),
        log=lambda _m: None,
    ).run_info
    return losses(run_dir), info


RUN_AND_REPORT = """
import json, os, sys
sys.path.insert(0, {helpers!r})
import jax
from speedrun_helpers import tiny_config
from marin_optim.speedrun import run_speedrun, results as res
out = {{}}
for label, extra in {runs!r}:
    run_dir = os.path.join({root!r}, label)
    cfg = tiny_config(run_dir, "--train.checkpoint_interval", "0", *extra)
    result = run_speedrun(cfg, log=lambda m: None, keep_state=True)
    info = result.run_info
    rows = res.read_metrics(os.path.join(run_dir, res.METRICS))
    w = result.params.layers.stacked.mlp.up_proj.weight
    moments = [x for x in jax.tree.leaves(result.opt_state) if x.shape == w.array.shape]
    out[label] = {{"loss": [r["loss"] for r in rows if "loss" in r], "eval": info["eval_loss"],
                   "mesh": info["mesh"], "devices": jax.device_count(), "processes": jax.process_count(),
                   "axes": list(w.axis_names), "param_spec": [str(s) for s in w.array.sharding.spec],
                   "moment_specs": sorted({{tuple(str(s) for s in m.sharding.spec) for m in moments}})}}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_eight_devices_fsdp_and_tensor_parallel_match_one_device(one_device, tmp_path):
    """8 devices as data=4 (batch split, FSDP-sharded params and optimizer state) x model=2 (mlp,
    kv_heads and vocab split): every kind of sharding at once, one compilation."""
    ref, ref_info = one_device
    runs = [("fsdp4_tp2", ["--train.mesh.data", "4", "--train.mesh.model", "2"])]
    proc = run_python(
        RUN_AND_REPORT.format(helpers=str(REPO / "tests" / "speedrun"), runs=runs, root=str(tmp_path)),
        devices=8,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = last_json_line(proc.stdout)
    run = out["fsdp4_tp2"]
    assert run["mesh"] == {"data": 4, "model": 2} and run["devices"] == 8
    # The [layers, mlp, embed] weight and both Adam moments: mlp over model, embed over data.
    assert run["axes"] == ["layers", "mlp", "embed"]
    assert run["param_spec"] == ["None", "model", "data"]
    assert run["moment_specs"] == [["None", "model", "data"]]
    for label in ("fsdp4_tp2",):
        got = out[label]["loss"]
        assert len(got) == len(ref) == 12
        assert max(abs(a - b) for a, b in zip(got, ref, strict=True)) < TOLERANCE, (label, got, ref)
        assert abs(out[label]["eval"] - ref_info["eval_loss"]) < TOLERANCE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_with_jax_distributed_match_one_device(one_device, tmp_path):
    ref, ref_info = one_device
    port = _free_port()
    run_dir = tmp_path / "dist"
    code = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(REPO / "tests" / "speedrun")!r})
        import jax
        from speedrun_helpers import tiny_config
        from marin_optim.speedrun import run_speedrun
        cfg = tiny_config({str(run_dir)!r}, "--train.checkpoint_interval", "6",
                          "--distributed.coordinator_address", "127.0.0.1:" + sys.argv[2],
                          "--distributed.num_processes", "2", "--distributed.process_id", sys.argv[1],
                          *sys.argv[3:])
        info = run_speedrun(cfg, log=lambda m: None).run_info
        print(json.dumps({{"eval": info["eval_loss"], "processes": jax.process_count(),
                          "devices": jax.device_count(), "mesh": info["mesh"]}}))
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}

    def both(port: int, *args: str) -> list[dict]:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(i), str(port), *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=REPO,
            )
            for i in range(2)
        ]
        outs = []
        try:
            for p in procs:
                stdout, stderr = p.communicate(timeout=300)
                outs.append((p.returncode, stdout, stderr))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        for rc, _stdout, stderr in outs:
            assert rc == 0, stderr[-3000:]
        return [last_json_line(stdout) for _, stdout, _ in outs]

    reports = both(port)
    for r in reports:
        assert r["processes"] == 2 and r["devices"] == 2 and r["mesh"] == {"data": 2, "model": 1}
        assert abs(r["eval"] - ref_info["eval_loss"]) < TOLERANCE
    got = losses(run_dir)  # written once, by process 0
    assert max(abs(a - b) for a, b in zip(got, ref, strict=True)) < TOLERANCE
    assert json.loads((run_dir / res.RESULTS).read_text())["runs"][0]["run_info"]["num_processes"] == 2
    assert sorted(int(p.name) for p in (run_dir / res.CHECKPOINTS).iterdir() if p.name.isdigit()) == [6, 12]

    # Killed after its last checkpoint, before results.json: only process 0 reads the history (which
    # holds the final eval); resumed, the two agree on it rather than one evaluating alone (a hang).
    rows = (run_dir / res.METRICS).read_text()
    (run_dir / res.RESULTS).unlink()
    (run_dir / res.METRICS).rename(run_dir / res.PARTIAL_METRICS)
    again = both(_free_port(), "--resume", "true")
    assert [r["eval"] for r in again] == [reports[0]["eval"]] * 2
    assert (run_dir / res.METRICS).read_text() == rows and (run_dir / res.RESULTS).exists()
