"""Shared test setup: keep XLA to the machine's cores and make test output deterministic."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # batched LAPACK calls crawl with many threads
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
