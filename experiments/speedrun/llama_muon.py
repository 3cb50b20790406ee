"""Muon on the same run as the AdamW baseline (Jordan et al., 2024; Levanter's ``muon``).

Hidden matrices (attention and MLP projections, each scan-stacked layer its own matrix) take
Newton-Schulz-orthogonalised momentum at ``learning_rate``; the embedding, the LM head and the
norms take AdamW at ``adam_lr``, both on the same cosine schedule; ``max_grad_norm`` clips the AdamW
branch (Levanter's rule; ``--optimizer.clip_scope all`` for one global clip).
Print the split with ``MuonConfig().describe_labels(params)``.

    python experiments/speedrun/llama_muon.py                               # ~3-5 minutes on 2 cores
    python experiments/speedrun/llama_muon.py --optimizer.type normuon      # NorMuon, same fields
    python experiments/speedrun/llama_muon.py --optimizer.use_kimi_scaling true --optimizer.learning_rate 3e-3
"""

from marin_optim.optimizers.muon import MuonConfig
from marin_optim.speedrun import Author, SpeedrunConfig, TrainConfig, run_script

config = SpeedrunConfig(
    author=Author(name="marin_optim", affiliation="marin-community"),
    description="Muon: peak LR 0.02 on hidden matrices (spectral scaling), AdamW at 3e-3 elsewhere, cosine.",
    train=TrainConfig(batch_size=16, seq_len=128, num_train_steps=300),
    optimizer=MuonConfig(learning_rate=0.02, adam_lr=3e-3, warmup=0.05, weight_decay=0.0, momentum=0.95),
    output_dir="runs/experiments/llama_muon",
)

if __name__ == "__main__":
    raise SystemExit(run_script(config))
