"""XLA:CPU multi-output fusion: the XLA_FLAGS edit, and what it does to a compiled step and a run."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from speedrun_helpers import TINY_ARGS, last_json_line, run_python

from marin_optim import xla

KEY = xla.MULTI_OUTPUT_FUSION


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("", f"--xla_backend_extra_options={KEY}"),
        (
            "--xla_force_host_platform_device_count=8",
            f"--xla_force_host_platform_device_count=8 --xla_backend_extra_options={KEY}",
        ),
        # XLA reads only the last --xla_backend_extra_options: other keys are merged into one flag.
        (
            "--xla_backend_extra_options=a=1,b --xla_dump_to=/tmp/d",
            f"--xla_dump_to=/tmp/d --xla_backend_extra_options=a=1,b,{KEY}",
        ),
        (f"--xla_backend_extra_options=x,{KEY}", f"--xla_backend_extra_options=x,{KEY}"),
        # the user's flags as written, unquoted ('--xla_dump_hlo_pass_re=.*' would end XLA's parse)
        (
            "--xla_dump_to=/tmp/d --xla_dump_hlo_pass_re=.*",
            f"--xla_dump_to=/tmp/d --xla_dump_hlo_pass_re=.* --xla_backend_extra_options={KEY}",
        ),
    ],
)
def test_flag_is_added_once_keeping_other_flags(flags, expected):
    assert xla.with_multi_output_fusion(flags) == expected
    assert xla.cpu_multi_output_fusion_enabled(expected)
    assert xla.with_multi_output_fusion(expected) == expected


def test_enabled_reads_the_last_extra_options_flag():
    assert not xla.cpu_multi_output_fusion_enabled("")
    assert not xla.cpu_multi_output_fusion_enabled(f"--xla_backend_extra_options={KEY}=false")
    assert not xla.cpu_multi_output_fusion_enabled(
        f"--xla_backend_extra_options={KEY} --xla_backend_extra_options=other"
    )
    assert xla.cpu_multi_output_fusion_enabled(f"--xla_backend_extra_options=other,{KEY}=true")


def test_too_late_once_the_backend_has_started(monkeypatch):
    jax.devices()
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    assert xla.enable_cpu_multi_output_fusion() is False
    assert xla.configure_training_process() is False
    monkeypatch.setenv(xla.ENV_SWITCH, "0")
    assert xla.configure_training_process() is False
    assert jax.numpy.ones(2).sum() == 2  # the running backend is untouched
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"


# In a fresh process: the speedrun CLI (which switches the pass on first unless told not to),
# then the compiled AdamW step of a two-leaf tree: its loops writing parameter-shaped arrays,
# and its temporary bytes.
CHILD = r"""
import contextlib, io, json, pathlib, re
from marin_optim.cli.training import speedrun_main
from marin_optim.speedrun import results as res
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = speedrun_main({argv!r})
import jax, jax.numpy as jnp, optax
from marin_optim import OptimizerConfig
R = OptimizerConfig.registered()
params = {{"a": jnp.ones((256, 128)), "b": jnp.ones((512, 64))}}
compiled = {{}}
for name, cfg in {{
    "bare": R["adamw"](max_grad_norm=None, skip_nonfinite=False, lr_schedule="constant", warmup=0),
    "default": R["adamw"](),
    "adamax": R["adamax"](),
    "lion": R["lion"](),
    "adagrad": R["adagrad"](weight_decay=0.1),
    "rmsprop_plain": R["rmsprop_plain"](weight_decay=0.1, momentum=0.9),
    "rmsprop": R["rmsprop"](),
    "sgd": R["sgd"](weight_decay=0.1, nesterov=True),
}}.items():
    tx = cfg.build(10)
    def step(p, s, g, tx=tx):
        u, s = tx.update(g, s, p, loss=jnp.float32(1))
        return optax.apply_updates(p, u), s
    exe = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), params).compile()
    hlo = exe.as_text()
    entry = hlo[hlo.index("ENTRY"):]
    array_out = re.compile(r"\s*\(?f32\[(256,128|512,64)\]")  # writes parameter-shaped arrays
    loops = [l for l in entry.splitlines() if " fusion(" in l and array_out.match(l.split("=", 1)[1])]
    compiled[name] = [len(loops), exe.memory_analysis().temp_size_in_bytes]
info = res.read_results({run_dir!r})
metrics = res.read_metrics(pathlib.Path({run_dir!r}) / res.METRICS)
losses = [r["loss"] for r in metrics if "loss" in r]
lines = out.getvalue().splitlines()
print(json.dumps({{"rc": rc, "header": [l for l in lines if "mesh:" in l],
                   "path_line": [l for l in lines if "update path:" in l],
                   "path": [info["update_path"], info["update_path_reason"]],
                   "one_pass": [r["one_pass"] for r in metrics if "one_pass" in r],
                   "compiled": compiled, "recorded": info["xla_cpu_multi_output_fusion"],
                   "losses": losses}}))
"""


@pytest.mark.extended
def test_speedrun_cli_switches_the_pass_on_with_the_same_results(tmp_path):
    runs = {}
    for setting in ("1", "0"):
        run_dir = tmp_path / f"run{setting}"
        argv = [*TINY_ARGS, "--output_dir", str(run_dir), "--train.checkpoint_interval", "0"]
        proc = run_python(CHILD.format(argv=argv, run_dir=str(run_dir)), env={xla.ENV_SWITCH: setting})
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[setting] = last_json_line(proc.stdout)
    on, off = runs["1"], runs["0"]
    assert on["rc"] == off["rc"] == 0
    assert "; XLA:CPU multi-output fusion on;" in on["header"][0], on["header"]
    assert "; XLA:CPU multi-output fusion off;" in off["header"][0], off["header"]
    assert (on["recorded"], off["recorded"]) == (True, False)
    # The update path follows, and every place says which it took: header, results, metrics.
    assert on["path"] == ["one_pass", "adamw rule, XLA:CPU multi-output fusion on"], on["path"]
    assert off["path"] == ["chain", "XLA:CPU multi-output fusion is off"], off["path"]
    assert on["path_line"] == ["  update path: one_pass (adamw rule, XLA:CPU multi-output fusion on)"]
    assert set(on["one_pass"]) == {1.0} and set(off["one_pass"]) == {0.0}
    # With the pass, AdamW (bare, and with clip + guard + schedule) and every other optimizer
    # with a one-pass rule (default clip + guard + schedule) is one loop per leaf with no
    # parameter-sized temporary; without it AdamW's chain is three loops per leaf (m', v',
    # then p' reading them).
    for name, (loops, temp_bytes) in on["compiled"].items():
        assert loops == 2 and temp_bytes < 4096, (name, on["compiled"])
    assert off["compiled"]["bare"][0] == 6, off["compiled"]
    # Fusion regroups loops (and their vectorization), not the algorithm: the losses agree to
    # float32 rounding (they differ in the last bits after a few steps).
    assert len(on["losses"]) == len(off["losses"]) == 12
    np.testing.assert_allclose(on["losses"], off["losses"], rtol=1e-5)
