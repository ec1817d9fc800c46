"""What the parts of the model corpus (tests/models.py, tests/light_models.py) share: the
corpus version in cached file names, the check that caches stay outside the repository, and
deterministic seeds and example inputs (a model's seed comes from its name, so its weights
and inputs are the same in every process)."""

from __future__ import annotations

import os
import zlib

import numpy as np

# Bump when a model's definition or export settings change, so persistent caches
# (SLIMC_MODEL_CACHE) do not serve stale files.
CORPUS_VERSION = 2


def check_outside_repo(directory: str) -> None:
    repo = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    d = os.path.realpath(directory)
    if os.path.commonpath([repo, d]) == repo:
        raise ValueError(f"model cache {directory!r} is inside the repository; use a directory "
                         f"outside it")


def seed(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF

def image_input(shape, name: str) -> np.ndarray:
    """Normalised-image-like input: standard normal, deterministic per model."""
    return np.random.default_rng(seed(name)).standard_normal(shape).astype(np.float32)


def token_inputs(name: str, batch: int, seq: int, vocab: int, mask: bool = True,
                 token_types: bool = False) -> dict:
    """input_ids (random tokens), attention_mask (the second sequence padded at the end),
    token_type_ids (two segments)."""
    rng = np.random.default_rng(seed(name))
    out = {"input_ids": rng.integers(0, vocab, (batch, seq)).astype(np.int64)}
    if mask:
        m = np.ones((batch, seq), np.int64)
        if batch > 1:
            m[1, seq - seq // 4:] = 0
        out["attention_mask"] = m
    if token_types:
        t = np.zeros((batch, seq), np.int64)
        t[:, seq // 2:] = 1
        out["token_type_ids"] = t
    return out
