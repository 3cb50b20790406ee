"""Lion on the same run as the AdamW baseline (Chen et al., 2023).

Lion's sign update moves every coordinate by the learning rate, so its LR is ~10x smaller than
AdamW's and its weight decay ~10x larger (the product lr * wd is what decays the weights).

    python experiments/speedrun/lion.py
"""

from marin_optim import LionConfig
from marin_optim.speedrun import Author, SpeedrunConfig, TrainConfig, run_script

config = SpeedrunConfig(
    author=Author(name="marin_optim", affiliation="marin-community"),
    description="Lion: peak LR 3e-4, weight decay 1.0, betas (0.9, 0.99).",
    train=TrainConfig(batch_size=16, seq_len=128, num_train_steps=300),
    optimizer=LionConfig(learning_rate=3e-4, weight_decay=1.0, warmup=0.05, beta1=0.9, beta2=0.99),
    output_dir="runs/experiments/lion",
)

if __name__ == "__main__":
    raise SystemExit(run_script(config))
