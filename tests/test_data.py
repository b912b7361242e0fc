"""Dataset registry: resolution order, the loud sample fallback, and data-file errors."""

import json
import logging

import pandas as pd
import pytest

from entrainment_cli.data import registry
from entrainment_cli.errors import UserError

MATH = registry.get_spec("math500")


def test_unknown_dataset_lists_known():
    with pytest.raises(
        UserError,
        match="unknown dataset 'nope'; known datasets: " + ", ".join(sorted(registry.REGISTRY)),
    ):
        registry.get_spec("nope")


def test_offline_falls_back_to_sample_loudly(caplog):
    with caplog.at_level(logging.WARNING, logger="entrain"):
        data = registry.load(MATH)
    assert data.source == "sample" and "bundled sample" in caplog.text
    assert data.identity()["data_source"] == "sample"
    levels = sorted({r["level"] for r in data.rows})
    assert levels == [1, 2, 3, 4, 5] and 20 <= len(data.rows) <= 32
    assert data.ids == [r["unique_id"] for r in data.rows]
    for row in data.rows:
        assert f"\\boxed{{{row['answer']}}}" in row["solution"]


def test_data_file_jsonl_and_parquet(tmp_path):
    rows = registry.load(MATH).rows[:3]
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    pq = tmp_path / "d.parquet"
    pd.DataFrame(rows).to_parquet(pq)
    for path in (jl, pq):
        data = registry.load(MATH, path)
        assert data.source == "file" and data.rows == rows
    assert registry.load(MATH, jl).fingerprint == registry.load(MATH, pq).fingerprint


def test_bad_json_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps(registry.load(MATH).rows[0])
    path.write_text(f"{good}\n{good}\n{{not json\n")
    with pytest.raises(UserError, match=r"line 3: not valid JSON"):
        registry.load(MATH, path)


def test_missing_field_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    row = registry.load(MATH).rows[0]
    path.write_text(
        json.dumps(row) + "\n" + json.dumps({k: v for k, v in row.items() if k != "level"}) + "\n"
    )
    with pytest.raises(UserError, match=r"line 2: missing field\(s\) level"):
        registry.load(MATH, path)


def test_duplicate_ids_and_missing_file(tmp_path):
    path = tmp_path / "d.jsonl"
    row = json.dumps(registry.load(MATH).rows[0])
    path.write_text(f"{row}\n{row}\n")
    with pytest.raises(UserError, match="duplicate values"):
        registry.load(MATH, path)
    with pytest.raises(UserError, match="does not exist"):
        registry.load(MATH, tmp_path / "missing.jsonl")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="unsupported type"):
        registry.load(MATH, tmp_path / "d.csv")


def test_unreachable_hub_goes_offline_at_once(monkeypatch):
    import os
    import socket

    def refuse(*_a, **_k):
        raise OSError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(socket, "create_connection", refuse)
    data = registry.load(MATH)
    assert data.source == "sample" and os.environ["HF_HUB_OFFLINE"] == "1"
