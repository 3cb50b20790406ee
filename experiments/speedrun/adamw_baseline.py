"""AdamW baseline: the default CPU model on the Python standard library, 300 steps.

python experiments/speedrun/adamw_baseline.py                       # ~2-3 minutes on 2 cores
python experiments/speedrun/adamw_baseline.py --train.num_train_steps 50
"""

from marin_optim import AdamWConfig
from marin_optim.speedrun import Author, SpeedrunConfig, TrainConfig, run_script

config = SpeedrunConfig(
    author=Author(name="marin_optim", affiliation="marin-community"),
    description="AdamW baseline: cosine schedule, peak LR 3e-3, 5% warmup.",
    train=TrainConfig(batch_size=16, seq_len=128, num_train_steps=300),
    optimizer=AdamWConfig(learning_rate=3e-3, warmup=0.05, weight_decay=0.1, beta2=0.95),
    output_dir="runs/experiments/adamw_baseline",
)

if __name__ == "__main__":
    raise SystemExit(run_script(config))
