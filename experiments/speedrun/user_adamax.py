"""A user-defined optimizer, registered in the script itself: a Levanter-style Adamax with its own build.

marin_optim ships its own ``adamax``; a class defined outside the package may take over the name
(the library logs the replacement), so this script works as written, from Python, YAML
(``optimizer: {type: adamax, ...}``) and the command line
(``python experiments/speedrun/user_adamax.py --optimizer.beta2 0.99``).
"""

from dataclasses import dataclass

import optax

from marin_optim import OptimizerConfig
from marin_optim.speedrun import Author, SpeedrunConfig, TrainConfig, run_script


@OptimizerConfig.register_subclass("adamax")
@dataclass(frozen=True)
class AdamaxConfig(OptimizerConfig):
    """Adamax (user-defined in experiments/speedrun/user_adamax.py)."""

    beta1: float = 0.9
    beta2: float = 0.95
    epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0

    def build(self, num_train_steps: int) -> optax.GradientTransformation:
        def _optimizer(learning_rate):
            parts = []
            if self.max_grad_norm is not None:
                parts.append(optax.clip_by_global_norm(self.max_grad_norm))
            parts.append(optax.scale_by_adamax(self.beta1, self.beta2, self.epsilon))
            if self.weight_decay > 0:
                parts.append(optax.add_decayed_weights(self.weight_decay, self.build_weight_decay_mask()))
            parts.append(optax.scale(-learning_rate))
            return optax.chain(*parts)

        return optax.inject_hyperparams(_optimizer)(learning_rate=self.lr_scheduler(num_train_steps))


config = SpeedrunConfig(
    author=Author(name="marin_optim", affiliation="marin-community"),
    description="User-defined Adamax registered in the script: peak LR 3e-3.",
    train=TrainConfig(batch_size=16, seq_len=128, num_train_steps=300),
    optimizer=AdamaxConfig(learning_rate=3e-3, warmup=0.05, weight_decay=0.1),
    output_dir="runs/experiments/user_adamax",
)

if __name__ == "__main__":
    raise SystemExit(run_script(config))
