"""A Marin-style speedrun: a marin_optim optimizer inside Levanter's own ``train_lm``, offline, on a CPU.

Marin's speedrun scripts hand Levanter a ``TrainLmConfig`` whose ``optimizer`` is any optimizer
config; here it is marin_optim's Muon, written in Python. The model is a small Llama, the data are
the bytes of the Python standard library (:mod:`marin_optim.levanter.offline` writes them as a
Levanter token cache), the tracker logs to ``{out}/logs/run.log.log``.

    pip install -e ".[levanter]"
    python experiments/levanter/speedrun.py                        # train (a few minutes on 2 cores)
    python experiments/levanter/speedrun.py --write-yaml run.yaml  # or write the same run as YAML:
    marin-optim levanter train_lm --config_path run.yaml           # ... and run it from the YAML
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import draccus
import yaml

import marin_optim.levanter  # our optimizers in Levanter's registry; its trainer fixed for them
from marin_optim import MuonConfig
from marin_optim.levanter import offline

OPTIMIZER = MuonConfig(learning_rate=0.02, adam_lr=3e-3, warmup=0.05, weight_decay=0.0)


def config_dict(out: Path, steps: int) -> dict:
    """The run as a ``train_lm`` YAML mapping (writes the token cache under ``out`` once)."""
    cfg = offline.train_lm_config(
        out,
        optimizer=draccus.encode(OPTIMIZER, marin_optim.levanter.LevanterOptimizerConfig),
        source="stdlib",
        num_train_steps=steps,
        batch_size=16,
        seq_len=128,
        hidden_dim=128,
        num_layers=4,
        num_heads=4,
        num_validation_sequences=64,
    )
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/levanter/speedrun"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--write-yaml", type=Path, default=None, help="write the run as a train_lm YAML and stop")
    args = ap.parse_args()
    cfg = config_dict(args.out, args.steps)
    if args.write_yaml:
        args.write_yaml.write_text(yaml.safe_dump(cfg, sort_keys=False))
        print(f"wrote {args.write_yaml}: marin-optim levanter train_lm --config_path {args.write_yaml}")
        return

    from levanter.main import train_lm

    config = draccus.decode(train_lm.TrainLmConfig, cfg)
    # The Python form: TrainLmConfig(optimizer=<a marin_optim config>)
    config = dataclasses.replace(config, optimizer=OPTIMIZER)
    train_lm.main(config)
    metrics = offline.read_metrics(args.out)
    last = metrics[max(metrics)]
    train, evaluated = last.get("train/loss", float("nan")), last.get("eval/loss", float("nan"))
    print(
        f"{type(OPTIMIZER).__name__} in Levanter's train_lm, {args.steps} steps: train loss {train:.4f}, "
        f"eval loss {evaluated:.4f}"
    )


if __name__ == "__main__":
    main()
