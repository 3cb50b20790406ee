"""Start-up of every ``marin-optim`` command: its config parsed by ``parse_config`` against
``draccus.parse`` (draccus's argparse parser), alternating in one process.

Both get the same checked overrides of ``SpeedrunConfig`` (an optimizer choice among every
registered one) and must build equal configs; the ratio draccus / ours above 1 means ours is
faster.

    python benchmarks/cli_parse.py               # 5 rounds
    python benchmarks/cli_parse.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

from marin_optim.cli import parse_config
from marin_optim.cli.parsing import parse_config_with_draccus
from marin_optim.speedrun import SpeedrunConfig

ARGV = [
    "--model.preset", "nano",
    "--train.num_train_steps", "50",
    "--optimizer.type", "lion",
    "--optimizer.beta2", "0.98",
    "--optimizer.lr_schedule", "wsd",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    order = [
        ("draccus", lambda: parse_config_with_draccus(SpeedrunConfig, ARGV)),
        ("ours", lambda: parse_config(SpeedrunConfig, ARGV)),
    ]
    assert order[0][1]() == order[1][1]()  # the same config; also warms both up
    times: dict[str, list[float]] = {"draccus": [], "ours": []}
    for r in range(rounds):
        for name, fn in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, t in median.items():
        print(f"{name:8s} median {t * 1e3:9.1f} ms over {rounds} rounds")
    print(f"draccus / ours: {median['draccus'] / median['ours']:.0f}x")


if __name__ == "__main__":
    main()
