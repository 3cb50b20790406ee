"""Byte-level training data that ships with every Python install, and a deterministic sampler.

Three sources, all turned into one ``uint8`` stream for training and one for validation:

- ``stdlib`` (default): the ``.py`` files of the running interpreter's standard library (the
  directory of ``os.__file__``, without ``site-packages``), in sorted path order; every k-th file
  (k = round(1 / val_fraction)) is held out for validation, so no validation text is trained on.
- ``files``: the user's ``.txt`` files (one document each) and ``.jsonl`` files (one document per
  line, the ``text_key`` field); directories are read recursively in sorted order.
- ``markov``: a seeded synthetic Markov chain with a known entropy rate, so a run can report its
  gap to the best achievable loss (:attr:`TokenDataset.loss_floor`).

Documents are joined with a NUL byte. Training sequences are windows of ``seq_len + 1`` bytes
(input and shifted target) taken in a seeded random order without replacement, epoch after
epoch; the data position is the number of sequences consumed, which is all a checkpoint needs to
resume exactly.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from marin_optim.errors import ConfigError, did_you_mean

SEPARATOR = 0
"""The byte between documents (NUL does not occur in source text)."""

Source = Literal["stdlib", "files", "markov"]


@dataclass(frozen=True)
class DataConfig:
    """Where the bytes come from and how they are split."""

    source: Source | None = None
    """stdlib (the Python standard library's .py files), files (data.files) or markov (synthetic);
    None = files when data.files is set, else stdlib."""
    files: list[str] | str | None = None
    """.txt / .jsonl files, directories or glob patterns (source=files): one path, or a list
    (`--data.files "[a.txt, b.jsonl]"`)."""
    text_key: str = "text"
    """Field holding the document in each .jsonl line."""
    val_fraction: float = 0.05
    """Share of the documents (or of the bytes, with fewer than 2/val_fraction documents) held out."""
    max_bytes: int | None = None
    """Stop reading text once this many bytes are read (in file order; the document that reaches
    it is kept whole); None = everything."""
    seed: int | None = None
    """Seed of the sampling order and of the Markov chain; None = train.seed."""
    markov_vocab: int = 32
    """Symbols of the synthetic chain (<= 256)."""
    markov_order: int = 2
    """How many previous symbols the next one depends on."""
    markov_concentration: float = 0.2
    """Dirichlet concentration of each transition row: smaller = more predictable."""
    markov_train_tokens: int = 2_000_000
    """Length of the synthetic training stream."""
    markov_val_tokens: int = 131_072
    """Length of the synthetic validation stream."""

    def __post_init__(self) -> None:
        if isinstance(self.files, str):
            object.__setattr__(self, "files", [self.files])
        if self.source is not None and self.source not in ("stdlib", "files", "markov"):
            raise ConfigError(
                f"data.source={self.source!r}: must be one of 'stdlib', 'files', 'markov'"
                f"{did_you_mean(str(self.source), ['stdlib', 'files', 'markov'])}"
            )
        if self.source == "files" and not self.files:
            raise ConfigError("data.source='files': needs data.files (paths of .txt/.jsonl files)")
        if self.files is not None and self.source in ("stdlib", "markov"):
            raise ConfigError(
                f"data.files is set but data.source={self.source!r}: use source=files (or leave it unset)"
            )
        if not (isinstance(self.val_fraction, (int, float)) and 0.0 < self.val_fraction < 0.5):
            raise ConfigError(f"data.val_fraction={self.val_fraction!r}: must be in (0, 0.5)")
        if self.max_bytes is not None and self.max_bytes < 1024:
            raise ConfigError(f"data.max_bytes={self.max_bytes!r}: must be >= 1024 (or None for everything)")
        if not (isinstance(self.markov_vocab, int) and 2 <= self.markov_vocab <= 256):
            raise ConfigError(f"data.markov_vocab={self.markov_vocab!r}: must be an int in [2, 256]")
        if not (isinstance(self.markov_order, int) and 1 <= self.markov_order <= 4):
            raise ConfigError(f"data.markov_order={self.markov_order!r}: must be an int in [1, 4]")
        if self.markov_vocab**self.markov_order > 2**20:
            raise ConfigError(
                f"data.markov_vocab={self.markov_vocab}, markov_order={self.markov_order}: "
                f"{self.markov_vocab}**{self.markov_order} contexts is too many (max 2**20)"
            )
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0
        ):
            raise ConfigError(f"data.seed={self.seed!r}: must be an int >= 0 (or None for train.seed)")
        if not self.markov_concentration > 0:
            raise ConfigError(f"data.markov_concentration={self.markov_concentration!r}: must be > 0")
        for name in ("markov_train_tokens", "markov_val_tokens"):
            if getattr(self, name) < 1024:
                raise ConfigError(f"data.{name}={getattr(self, name)!r}: must be >= 1024")

    @property
    def resolved_source(self) -> Source:
        if self.source is not None:
            return self.source
        return "files" if self.files else "stdlib"


@dataclass(frozen=True)
class TokenDataset:
    """Train and validation byte streams plus what is known about them."""

    name: str
    train: np.ndarray
    val: np.ndarray
    stride: int
    """Distance between the starts of consecutive sequences (seq_len, or seq_len + 1 when the
    stream is made of independent chunks, as the Markov source is)."""
    fingerprint: str
    """sha256 of both streams: a resumed run checks it still sees the same data."""
    num_documents: tuple[int, int]
    loss_floor: float | None = None
    """Best achievable mean loss per target byte in nats (known for the Markov source)."""


# ---- reading text -----------------------------------------------------------------------


def stdlib_root() -> Path:
    """The standard library directory of the running interpreter."""
    return Path(os.__file__).resolve().parent


def stdlib_files() -> list[Path]:
    """Every ``.py`` file of the standard library (no site-packages), sorted by relative path."""
    root = stdlib_root()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")]
        found.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def expand_files(patterns: list[str]) -> list[Path]:
    """Files named by paths, directories (recursive) or glob patterns; a missing one is a ConfigError."""
    out: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            out.extend(sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.as_posix()))
        elif any(ch in pattern for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True))
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise ConfigError(f"data.files: {pattern!r} matches no file")
            out.extend(matches)
        else:
            raise ConfigError(f"data.files: {pattern!r}: no such file or directory")
    if not out:
        raise ConfigError(f"data.files={patterns!r}: no files found")
    return out


def check_files_exist(cfg: DataConfig) -> None:
    """Fails with one line if any configured data file is missing (before anything heavy runs)."""
    if cfg.resolved_source == "files":
        expand_files(list(cfg.files or []))


def _documents(paths: list[Path], text_key: str, max_bytes: int | None) -> list[bytes]:
    docs: list[bytes] = []
    total = 0
    for path in paths:
        if path.suffix == ".jsonl":
            with path.open("rb") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                        text = record[text_key]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise ConfigError(
                            f"data.files: {str(path)!r} line {lineno}: expected a JSON object with a "
                            f"{text_key!r} string (data.text_key)"
                        ) from None
                    docs.append(str(text).encode("utf-8"))
                    total += len(docs[-1])
                    if max_bytes is not None and total >= max_bytes:
                        return docs
        else:
            docs.append(path.read_bytes())
            total += len(docs[-1])
        if max_bytes is not None and total >= max_bytes:
            break
    return docs


def _join(docs: list[bytes]) -> np.ndarray:
    joined = bytes([SEPARATOR]).join(d.replace(b"\x00", b" ") for d in docs)
    return np.frombuffer(joined, dtype=np.uint8)


def split_documents(docs: list[bytes], val_fraction: float) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Every k-th document to validation (k = round(1/val_fraction)); with too few documents,
    the last ``val_fraction`` of the bytes."""
    k = max(2, round(1.0 / val_fraction))
    if len(docs) >= 2 * k:
        val = [d for i, d in enumerate(docs) if i % k == k - 1]
        train = [d for i, d in enumerate(docs) if i % k != k - 1]
        return _join(train), _join(val), (len(train), len(val))
    stream = _join(docs)
    cut = int(len(stream) * (1.0 - val_fraction))
    return stream[:cut], stream[cut:], (len(docs), 0)


def _fingerprint(*streams: np.ndarray) -> str:
    h = hashlib.sha256()
    for s in streams:
        h.update(len(s).to_bytes(8, "little"))
        h.update(s.tobytes())
    return h.hexdigest()[:16]


# ---- the synthetic Markov source ---------------------------------------------------------


@dataclass(frozen=True)
class MarkovChain:
    """An order-``k`` chain over ``V`` symbols with Dirichlet(``alpha``) transition rows.

    A context is the last ``k`` symbols read as a base-``V`` number, oldest digit first; appending
    symbol ``x`` to context ``c`` gives ``(c * V + x) mod V^k``.
    """

    vocab: int
    order: int
    transitions: np.ndarray  # [V^k, V], rows sum to 1
    stationary: np.ndarray  # [V^k]

    @staticmethod
    def create(vocab: int, order: int, concentration: float, seed: int) -> MarkovChain:
        rng = np.random.default_rng([seed, 0x4D41524B])
        contexts = vocab**order
        transitions = rng.dirichlet(np.full(vocab, concentration), size=contexts)
        transitions = np.maximum(transitions, 1e-300)
        transitions /= transitions.sum(axis=1, keepdims=True)
        nxt = (np.arange(contexts)[:, None] * vocab + np.arange(vocab)[None, :]) % contexts
        pi = np.full(contexts, 1.0 / contexts)
        for _ in range(100_000):
            new = np.bincount(nxt.ravel(), weights=(pi[:, None] * transitions).ravel(), minlength=contexts)
            new /= new.sum()
            if np.abs(new - pi).max() < 1e-15:
                pi = new
                break
            pi = new
        return MarkovChain(vocab, order, transitions, pi)

    def entropy_rate(self) -> float:
        """``H = sum_c pi(c) H(P(.|c))`` in nats: the best achievable loss per symbol given full context."""
        p = self.transitions
        row_h = -(p * np.log(p)).sum(axis=1)
        return float(self.stationary @ row_h)

    def loss_floor(self, seq_len: int) -> float:
        """Best mean loss over the ``seq_len`` targets of a chunk that starts in the stationary state.

        Targets ``1..k-1`` see only part of their context: by the chain rule they contribute
        ``H(X_0..X_{k-1}) - H(X_0)``; the other ``seq_len - k + 1`` targets contribute ``H`` each.
        """
        k, v = self.order, self.vocab
        joint = _entropy(self.stationary)
        first = _entropy(self.stationary.reshape(v, v ** (k - 1)).sum(axis=1))
        n_full = seq_len - k + 1
        if n_full < 1:
            raise ConfigError(f"train.seq_len={seq_len}: must be >= data.markov_order={k}")
        return float((joint - first + n_full * self.entropy_rate()) / seq_len)

    def sample(self, num_chunks: int, chunk_len: int, seed: int) -> np.ndarray:
        """``[num_chunks, chunk_len]`` independent stretches of the chain, each from the stationary state."""
        rng = np.random.default_rng(seed)
        k, v = self.order, self.vocab
        contexts = v**k
        ctx = rng.choice(contexts, size=num_chunks, p=self.stationary)
        out = np.empty((num_chunks, max(chunk_len, k)), dtype=np.uint8)
        for j in range(k):  # the initial context's digits, oldest first
            out[:, j] = (ctx // v ** (k - 1 - j)) % v
        cdf = np.cumsum(self.transitions, axis=1)
        for t in range(k, chunk_len):
            u = rng.random(num_chunks)
            x = np.minimum((u[:, None] > cdf[ctx]).sum(axis=1), v - 1)
            out[:, t] = x
            ctx = (ctx * v + x) % contexts
        return out[:, :chunk_len]


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


# ---- loading ----------------------------------------------------------------------------


def load_dataset(cfg: DataConfig, seq_len: int, seed: int) -> TokenDataset:
    """Reads or generates the streams; ``seq_len`` is needed by the Markov source (chunk length)."""
    source = cfg.resolved_source
    data_seed = seed if cfg.seed is None else cfg.seed
    if source == "markov":
        chain = MarkovChain.create(cfg.markov_vocab, cfg.markov_order, cfg.markov_concentration, data_seed)
        chunk = seq_len + 1
        n_train = math.ceil(cfg.markov_train_tokens / chunk)
        n_val = math.ceil(cfg.markov_val_tokens / chunk)
        train = chain.sample(n_train, chunk, seed=hash_seed(data_seed, 1)).reshape(-1)
        val = chain.sample(n_val, chunk, seed=hash_seed(data_seed, 2)).reshape(-1)
        name = (
            f"markov(vocab={cfg.markov_vocab}, order={cfg.markov_order}, "
            f"concentration={cfg.markov_concentration}, seed={data_seed})"
        )
        return TokenDataset(
            name=name,
            train=train,
            val=val,
            stride=chunk,
            fingerprint=_fingerprint(train, val),
            num_documents=(n_train, n_val),
            loss_floor=chain.loss_floor(seq_len),
        )
    if source == "stdlib":
        paths = stdlib_files()
        name = f"stdlib({stdlib_root()}, {len(paths)} .py files)"
    else:
        paths = expand_files(list(cfg.files or []))
        name = f"files({len(paths)} files)"
    docs = _documents(paths, cfg.text_key, cfg.max_bytes)
    train, val, counts = split_documents(docs, cfg.val_fraction)
    return TokenDataset(
        name=name,
        train=train,
        val=val,
        stride=seq_len,
        fingerprint=_fingerprint(train, val),
        num_documents=counts,
    )


def hash_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0]) >> 1


# ---- sampling ---------------------------------------------------------------------------


class SequenceSampler:
    """Sequences of ``seq_len + 1`` bytes from a stream, in a seeded order, epoch after epoch.

    Sequence ``i`` of the run (the data position) is chunk ``perm_e[i mod n]`` of epoch
    ``e = i // n``, where ``perm_e`` is a permutation seeded by ``(seed, e)``. Nothing else is
    stateful, so any position can be produced directly.
    """

    def __init__(self, stream: np.ndarray, seq_len: int, stride: int, seed: int, shuffle: bool = True):
        self.stream = stream
        self.seq_len = seq_len
        self.stride = stride
        self.seed = seed
        self.shuffle = shuffle
        self.num_chunks = (len(stream) - (seq_len + 1)) // stride + 1 if len(stream) > seq_len else 0
        self._perms: dict[int, np.ndarray] = {}
        self._offsets = np.arange(seq_len + 1)

    def _perm(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng(hash_seed(self.seed, epoch)).permutation(self.num_chunks)
            self._perms = {epoch: perm}  # keep only the current epoch's
        return perm

    def chunk_ids(self, start: int, count: int) -> np.ndarray:
        ids = np.arange(start, start + count)
        if not self.shuffle:
            return ids % self.num_chunks
        out = np.empty(count, dtype=np.int64)
        epochs = ids // self.num_chunks
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(int(e))[ids[sel] % self.num_chunks]
        return out

    def sequences(self, start: int, count: int) -> np.ndarray:
        """``[count, seq_len + 1]`` uint8: sequences ``start .. start + count - 1`` of the run."""
        starts = self.chunk_ids(start, count) * self.stride
        return self.stream[starts[:, None] + self._offsets[None, :]]
