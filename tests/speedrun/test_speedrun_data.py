"""Data: the stdlib source and its split, user files, the Markov floor, the sampler's order."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from marin_optim import ConfigError
from marin_optim.speedrun.data import (
    SEPARATOR,
    DataConfig,
    MarkovChain,
    SequenceSampler,
    load_dataset,
    split_documents,
    stdlib_files,
)


def test_stdlib_source_is_the_interpreters_own_py_files_in_a_fixed_order():
    files = stdlib_files()
    assert len(files) > 100
    assert all(f.suffix == ".py" and "site-packages" not in f.parts for f in files)
    assert any(f.name == "os.py" for f in files)
    a = load_dataset(DataConfig(max_bytes=300_000), seq_len=64, seed=0)
    b = load_dataset(DataConfig(max_bytes=300_000), seq_len=64, seed=123)  # the seed only orders sampling
    assert a.fingerprint == b.fingerprint
    assert a.train.dtype == np.uint8 and len(a.val) > 0


def test_every_kth_document_is_held_out_and_never_trained_on():
    docs = [f"doc{i:03d} ".encode() * 10 for i in range(40)]
    train, val, counts = split_documents(docs, val_fraction=0.1)
    assert counts == (36, 4)
    val_docs = bytes(val).split(bytes([SEPARATOR]))
    assert [d[:6] for d in val_docs] == [b"doc009", b"doc019", b"doc029", b"doc039"]
    for d in val_docs:
        assert d not in bytes(train)


def test_a_single_document_is_split_by_bytes():
    train, val, _ = split_documents([bytes(range(200)) * 5], val_fraction=0.2)
    assert len(train) == 800 and len(val) == 200


def test_user_txt_and_jsonl_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 200)
    with (tmp_path / "b.jsonl").open("w") as f:
        for i in range(50):
            f.write(json.dumps({"text": f"line {i} " * 20}) + "\n")
    ds = load_dataset(DataConfig(files=[str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]), 32, 0)
    assert ds.name.startswith("files(2 files)")
    assert ds.num_documents[0] + ds.num_documents[1] == 51
    assert b"line 3 " in bytes(ds.train) + bytes(ds.val)


def test_missing_file_and_bad_jsonl_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.files: .*nope\.txt.*no such file"):
        load_dataset(DataConfig(files=[str(tmp_path / "nope.txt")]), 32, 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "x"}\n')
    with pytest.raises(ConfigError, match=r"line 1.*'text'"):
        load_dataset(DataConfig(files=[str(bad)]), 32, 0)


def test_markov_entropy_rate_matches_the_empirical_conditional_entropy():
    chain = MarkovChain.create(vocab=8, order=2, concentration=0.3, seed=3)
    x = chain.sample(num_chunks=2000, chunk_len=200, seed=1).astype(np.int64)
    # Empirical H(X_t | X_{t-2}, X_{t-1}) on the full-context positions.
    ctx = (x[:, :-2] * 8 + x[:, 1:-1]).ravel()
    nxt = x[:, 2:].ravel()
    counts = np.zeros((64, 8))
    np.add.at(counts, (ctx, nxt), 1)
    p_ctx = counts.sum(1) / counts.sum()
    cond = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h_rows = -np.nansum(np.where(cond > 0, cond * np.log(cond), 0.0), axis=1)
    empirical = float(p_ctx @ h_rows)
    assert abs(empirical - chain.entropy_rate()) < 0.01
    # The stationary distribution is what chunks start from: the first context's frequency matches it.
    first = x[:, 0] * 8 + x[:, 1]
    freq = np.bincount(first, minlength=64) / len(first)
    assert np.abs(freq - chain.stationary).max() < 0.03


def test_markov_floor_accounts_for_the_first_targets_partial_context():
    chain = MarkovChain.create(vocab=4, order=2, concentration=0.5, seed=0)
    h = chain.entropy_rate()
    # Order 2, T targets: target 1 sees one symbol, targets 2..T see two.
    marg = chain.stationary.reshape(4, 4).sum(1)
    h_joint = -(chain.stationary * np.log(chain.stationary)).sum()
    h_first = -(marg * np.log(marg)).sum()
    T = 10
    assert math.isclose(chain.loss_floor(T), ((h_joint - h_first) + (T - 1) * h) / T, rel_tol=1e-12)
    assert chain.loss_floor(T) >= h
    ds = load_dataset(DataConfig(source="markov", markov_vocab=4, markov_train_tokens=4096), 10, 0)
    assert ds.loss_floor is not None and ds.stride == 11 and len(ds.train) % 11 == 0


def test_sampler_visits_every_chunk_once_per_epoch_and_is_position_addressable():
    stream = np.arange(1000, dtype=np.int64) % 251
    s = SequenceSampler(stream.astype(np.uint8), seq_len=9, stride=9, seed=7)
    n = s.num_chunks
    ids = s.chunk_ids(0, 2 * n)
    assert sorted(ids[:n]) == list(range(n)) and sorted(ids[n:]) == list(range(n))
    assert not np.array_equal(ids[:n], ids[n:])  # a fresh order each epoch
    # Any position can be produced directly: resuming at sequence k gives what a full run sees.
    full = s.sequences(0, 40)
    again = SequenceSampler(stream.astype(np.uint8), seq_len=9, stride=9, seed=7).sequences(17, 23)
    np.testing.assert_array_equal(full[17:], again)
    # Inputs and targets overlap by one: each sequence holds seq_len + 1 consecutive bytes.
    row = full[0].astype(np.int64)
    assert np.all(np.diff(row) % 251 == 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"source": "web"}, "data.source"),
        ({"source": "files"}, "needs data.files"),
        ({"val_fraction": 0.0}, "data.val_fraction"),
        ({"markov_vocab": 300}, "data.markov_vocab"),
    ],
)
def test_bad_data_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match.replace(".", r"\.")):
        DataConfig(**kwargs)
