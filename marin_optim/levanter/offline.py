"""Levanter's own ``train_lm`` on a laptop CPU, offline: data, config, run, and the logged metrics.

What ``marin-optim speedrun`` trains on, for Levanter: the speedrun's byte-level data
(:mod:`marin_optim.speedrun.data`: the Python standard library's sources, or a seeded Markov
chain) written as a Levanter token cache, read through the ``passthrough`` tokenizer (vocabulary
256, one token per byte), a tiny Llama, the ``json_logger`` tracker and a local checkpointer.
Used by the examples in ``experiments/levanter/``, by ``benchmarks/levanter_step.py`` and by the
plugin's tests.

- :func:`train_lm_config` writes the cache (once) and returns a ``train_lm`` config as plain data
  (``yaml.safe_dump`` it, or ``draccus.decode(TrainLmConfig, ...)`` it);
- :func:`run_train_lm` / :func:`start_train_lm` run it in a subprocess, through our launcher
  (``python -m marin_optim.levanter train_lm``) or as plain Levanter;
- :func:`read_metrics` reads every logged metric back, per step; :func:`list_checkpoints` finds
  the checkpoints.

What this works around (marin-levanter 0.2.20):

- ``LlamaConfig`` is HF-compatible, so ``train_lm`` loads the model's ``tokenizer`` (by default
  ``NousResearch/Llama-2-7b-hf``, a download); it is pointed at a byte-level tokenizer written
  locally. ``trainer.require_accelerator`` (true on Linux) is turned off.
- ``json_logger`` writes JSON lines through Python logging, which Levanter sends to
  ``{log_dir}/{run_id}.log.log`` (the name as Levanter makes it), appended to by a resumed run.
- Step hooks run from step 2 on (``TrainerHooks.run_hooks``), so metrics start at step 2.
- The loader asks for 32 batches per request, and a single dataset still goes through a
  ``MixtureDataset`` that permutes rows in blocks of ``mixture_block_size``; a request that wraps
  around the cache reads wrong rows or crashes. So the block is one batch and the cache holds at
  least ``max(num_train_steps, 32) * batch_size`` rows (:func:`rows_needed`).
- Any validation set makes Levanter evaluate, and its evaluation fails with more than one
  simulated CPU device: none unless ``num_validation_sequences`` is given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

VOCAB_SIZE = 256
"""One token per byte (the speedrun's data are bytes)."""
LOADER_PREFETCH_BATCHES = 32
"""Batches Levanter's data loader asks for at once; no request may wrap around the cache."""
_JSON_LOGGER_MARK = ' :: {"tracker": "json_logger"'


# -- data ---------------------------------------------------------------------------------------


def rows_needed(*, num_train_steps: int, batch_size: int, num_validation_sequences: int = 0) -> int:
    """Rows a cache needs so that no loader request wraps around it."""
    return max(num_train_steps, LOADER_PREFETCH_BATCHES) * batch_size + num_validation_sequences


def speedrun_rows(
    source: Literal["stdlib", "markov"], *, seq_len: int, num_rows: int, seed: int = 0
) -> np.ndarray:
    """``num_rows`` sequences of ``seq_len`` bytes (int32) of the speedrun's training stream, in order."""
    from marin_optim.speedrun.data import DataConfig, load_dataset

    data = load_dataset(DataConfig(source=source), seq_len, seed)
    stride = data.stride
    available = (len(data.train) - seq_len) // stride + 1
    if available < num_rows:
        raise ValueError(f"the {source} stream holds {available} sequences of {seq_len}, {num_rows} wanted")
    starts = np.arange(num_rows) * stride
    return data.train[starts[:, None] + np.arange(seq_len)[None, :]].astype(np.int32)


def write_token_cache(cache_dir: str | os.PathLike, rows: np.ndarray) -> None:
    """A finished Levanter token cache of ``input_ids`` rows at ``cache_dir`` (``SerialCacheWriter``).

    The ledger's metadata is what Levanter's ``prebuilt`` format expects, so loading it logs no
    metadata mismatch.
    """
    from levanter.store.cache import CacheMetadata, SerialCacheWriter

    exemplar = {"input_ids": np.zeros((0,), dtype=np.int32)}
    metadata = CacheMetadata(preprocessor_metadata={"input_ids_key": "input_ids", "loss_weights_key": None})
    with SerialCacheWriter(str(cache_dir), exemplar, metadata=metadata) as writer:
        for start in range(0, len(rows), 256):
            writer.write_batch({"input_ids": list(rows[start : start + 256])})


def write_byte_tokenizer(tokenizer_dir: str | os.PathLike, *, model_max_length: int) -> str:
    """A word-level HF tokenizer with tokens ``"0" .. "255"`` that ``AutoTokenizer`` loads offline.

    Only the model's HF converter reads it; the data go through the ``passthrough`` tokenizer.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    path = Path(tokenizer_dir)
    if (path / "tokenizer.json").exists() and (path / "tokenizer_config.json").exists():
        return str(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel({str(i): i for i in range(VOCAB_SIZE)}, unk_token="0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "unk_token": "0",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return str(path)


# -- config -------------------------------------------------------------------------------------


def train_lm_config(
    out_dir: str | os.PathLike,
    *,
    optimizer: Mapping[str, Any],
    num_train_steps: int = 20,
    batch_size: int = 8,
    seq_len: int = 64,
    hidden_dim: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    source: Literal["stdlib", "markov"] = "markov",
    checkpoint_every: int | None = None,
    mesh: Mapping[str, Any] | None = None,
    seed: int = 0,
    run_id: str = "run",
    num_validation_sequences: int | None = None,
    watch_interval: int | None = None,
    compilation_cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """A ``train_lm`` config (plain data) training a tiny Llama on the speedrun's ``source`` bytes.

    Writes, once, the token cache (``{out_dir}/data/...``) and the tokenizer
    (``{out_dir}/tokenizer``); checkpoints go to ``{out_dir}/checkpoints/{run_id}``, the log with
    the metrics to ``{out_dir}/logs/{run_id}.log.log``. ``checkpoint_every``: a checkpoint every
    that many steps (Levanter always saves the last step). ``mesh`` is ``trainer.mesh``, e.g.
    ``{"axes": {"data": 4, "model": 2}}`` (parameters sharded over ``data``: Levanter's default
    ``param_mapping``). ``num_validation_sequences`` holds rows out and turns evaluation on (one
    device only). ``watch_interval`` logs gradient and parameter norms (None: off).
    ``compilation_cache_dir`` is JAX's persistent compilation cache (repeated runs compile faster).
    """
    out = Path(out_dir).resolve()
    n_val = num_validation_sequences or 0
    num_rows = rows_needed(
        num_train_steps=num_train_steps, batch_size=batch_size, num_validation_sequences=n_val
    )
    cache_dir = out / "data" / f"{source}_s{seq_len}_n{num_rows}_seed{seed}"
    if not (cache_dir / "shard_ledger.json").exists():
        write_token_cache(cache_dir, speedrun_rows(source, seq_len=seq_len, num_rows=num_rows, seed=seed))
    trainer = _trainer_section(
        out, run_id, seed, num_train_steps, batch_size, checkpoint_every, watch_interval
    )
    if num_validation_sequences:
        trainer.update(steps_per_eval=num_train_steps, max_eval_batches=1)
    if mesh is not None:
        trainer["mesh"] = dict(mesh)
    if compilation_cache_dir is not None:
        trainer["jax_compilation_cache_dir"] = str(compilation_cache_dir)
    return {
        "data": _data_section(out, cache_dir, source, batch_size, num_validation_sequences),
        "model": _model_section(out, seq_len, hidden_dim, num_layers, num_heads),
        "trainer": trainer,
        "optimizer": dict(optimizer),
        "train_seq_len": seq_len,
    }


def _data_section(
    out: Path, cache_dir: Path, source: str, batch_size: int, num_validation_sequences: int | None
) -> dict[str, Any]:
    """The cache as one ``prebuilt`` component through the passthrough tokenizer, in file order."""
    component = {
        "type": "cached",
        "cache_dir": str(cache_dir),
        "flat_cache": True,
        "format": {"type": "prebuilt", "input_ids_key": "input_ids"},
    }
    data: dict[str, Any] = {
        "tokenizer": "passthrough",
        "vocab_size": VOCAB_SIZE,
        "cache_dir": str(out / "data"),
        "auto_build_caches": False,
        "enforce_eos": False,
        "shuffle": False,
        "components": {source: component},
        "train_weights": {source: 1.0},
        "mixture_block_size": batch_size,  # one batch a block: no loader request wraps the cache
    }
    if num_validation_sequences:
        data["num_validation_sequences"] = {source: num_validation_sequences}
        data["shuffle_before_trainval_split"] = False
    return data


def _model_section(
    out: Path, seq_len: int, hidden_dim: int, num_layers: int, num_heads: int
) -> dict[str, Any]:
    """A tiny Llama whose HF converter reads a local byte-level tokenizer (nothing is downloaded)."""
    tokenizer = write_byte_tokenizer(out / "tokenizer", model_max_length=seq_len)
    return {
        "type": "llama",
        "max_seq_len": seq_len,
        "hidden_dim": hidden_dim,
        "intermediate_dim": 2 * hidden_dim,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_heads,
        "gradient_checkpointing": False,
        "tokenizer": tokenizer,
        "reference_checkpoint": tokenizer,
    }


def _trainer_section(
    out: Path,
    run_id: str,
    seed: int,
    num_train_steps: int,
    batch_size: int,
    checkpoint_every: int | None,
    watch_interval: int | None,
) -> dict[str, Any]:
    """A CPU trainer logging through ``json_logger``, checkpointing under ``out``, evaluating never."""
    return {
        "id": run_id,
        "seed": seed,
        "num_train_steps": num_train_steps,
        "train_batch_size": batch_size,
        "steps_per_eval": 10 * num_train_steps + 1000,
        "tracker": {"type": "json_logger"},
        "log_dir": str(out / "logs"),
        "checkpointer": {
            "base_path": str(out / "checkpoints"),
            "save_interval": None,
            "keep": [{"every": checkpoint_every}] if checkpoint_every else [],
        },
        "require_accelerator": False,
        "log_jaxprs": False,
        "log_xla_hlo": False,
        # A jit hook compiles the step twice; every step (or never) compiles it once.
        "watch": {"watch_targets": ["grads", "params"], "interval": watch_interval}
        if watch_interval
        else {"watch_targets": [], "interval": 0},
    }


# -- running ------------------------------------------------------------------------------------


def offline_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` plus the settings that keep a run offline and on the CPU; ``env`` wins."""
    out = dict(os.environ)
    out.pop("RUN_ID", None)
    out.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "WANDB_MODE": "disabled",
            "JAX_PLATFORMS": "cpu",
            "TOKENIZERS_PARALLELISM": "false",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONUNBUFFERED": "1",
            "PYTHONWARNINGS": "ignore",
        }
    )
    out.update(env or {})
    return out


def write_config(config: Mapping[str, Any]) -> Path:
    """Writes ``config`` as YAML next to its log folder: ``{out_dir}/train_lm_{run_id}.yaml``."""
    import yaml

    trainer = config["trainer"]
    path = Path(trainer["log_dir"]).parent / f"train_lm_{trainer['id']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


def command(
    config_path: str | os.PathLike, extra_args: Sequence[str] = (), launcher: Sequence[str] | None = ()
) -> list[str]:
    """``python -m marin_optim.levanter *launcher train_lm --config_path FILE *extra_args``, or, with
    ``launcher=None``, Levanter's own ``python -m levanter.main.train_lm`` (no marin_optim)."""
    entry = (
        ["levanter.main.train_lm"] if launcher is None else ["marin_optim.levanter", *launcher, "train_lm"]
    )
    return [sys.executable, "-m", *entry, "--config_path", str(config_path), *extra_args]


def start_train_lm(
    config: Mapping[str, Any],
    extra_args: Sequence[str] = (),
    *,
    launcher: Sequence[str] | None = (),
    env: Mapping[str, str] | None = None,
    stdout: Any = subprocess.PIPE,
    stderr: Any = subprocess.PIPE,
) -> subprocess.Popen:
    """Starts ``train_lm`` in a subprocess (working directory: the config's folder)."""
    path = write_config(config)
    return subprocess.Popen(
        command(path, extra_args, launcher),
        cwd=path.parent,
        env=offline_env(env),
        stdout=stdout,
        stderr=stderr,
        text=True,
    )


def run_train_lm(
    config: Mapping[str, Any],
    extra_args: Sequence[str] = (),
    *,
    launcher: Sequence[str] | None = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess:
    """Runs ``train_lm`` to the end (see :func:`command`); the result carries ``wall_time`` (s).

    Never raises for a non-zero exit status; past ``timeout`` the process is killed and
    ``subprocess.TimeoutExpired`` raised.
    """
    start = time.perf_counter()
    proc = start_train_lm(config, extra_args, launcher=launcher, env=env)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    result.wall_time = time.perf_counter() - start  # type: ignore[attr-defined]
    return result


# -- results ------------------------------------------------------------------------------------


def log_file(out_dir: str | os.PathLike, run_id: str = "run") -> Path:
    """The run's log (what ``json_logger`` logged): ``{out_dir}/logs/{run_id}.log.log``."""
    return Path(out_dir) / "logs" / f"{run_id}.log.log"


def read_tracker_events(out_dir: str | os.PathLike, run_id: str = "run") -> list[dict[str, Any]]:
    """Every ``json_logger`` record of the run, in order (``{"event": "log", "step": ..., ...}``)."""
    events = []
    with open(log_file(out_dir, run_id)) as f:
        for line in f:
            at = line.find(_JSON_LOGGER_MARK)
            if at < 0:
                continue
            try:
                events.append(json.loads(line[at + 4 :]))
            except json.JSONDecodeError:
                continue  # a line cut short by a killed process
    return events


def _launches(events: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """One list per process launch: each starts with the ``hparams`` record of the whole config."""
    launches: list[list[dict[str, Any]]] = []
    for event in events:
        hparams = event.get("hparams")
        if not launches or (
            event.get("event") == "hparams" and isinstance(hparams, dict) and "trainer" in hparams
        ):
            launches.append([])
        launches[-1].append(event)
    return launches


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def read_metrics(
    out_dir: str | os.PathLike, run_id: str = "run", *, launch: int | None = None
) -> dict[int, dict[str, float]]:
    """``{step: {metric: value}}`` as the tracker logged them (numbers; booleans as 0/1).

    ``launch`` reads one process launch of a resumed run (0: the first, -1: the last); None merges
    them, the last value of a metric at a step winning. Steps are Levanter's (the first update is
    step 0); most metrics start at step 2.
    """
    events = read_tracker_events(out_dir, run_id)
    if launch is not None:
        events = _launches(events)[launch]
    out: dict[int, dict[str, float]] = {}
    for event in events:
        if event.get("event") != "log" or event.get("step") is None:
            continue
        row = out.setdefault(int(event["step"]), {})
        for name, value in _flatten(event.get("metrics") or {}).items():
            if isinstance(value, bool | int | float):
                row[name] = float(value)
    return dict(sorted(out.items()))


def list_checkpoints(config: Mapping[str, Any]) -> dict[int, Path]:
    """``{step: folder}`` of the run's complete checkpoints (those whose ``metadata.json`` exists).

    Checkpoint ``step-S`` holds the state after ``S + 1`` updates; a run resumed from it continues
    at step ``S + 1``.
    """
    root = Path(config["trainer"]["checkpointer"]["base_path"]) / config["trainer"]["id"]
    found: dict[int, Path] = {}
    for meta in root.glob("*/metadata.json") if root.is_dir() else ():
        try:
            found[int(json.loads(meta.read_text())["step"])] = meta.parent
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            continue  # being written
    return dict(sorted(found.items()))
