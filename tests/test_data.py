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
        match=f"unknown dataset 'nope'; known datasets: {', '.join(sorted(registry.REGISTRY))}$",
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
    (tmp_path / "d.txt").write_text("a,b\n")
    with pytest.raises(UserError, match="unsupported type"):
        registry.load(MATH, tmp_path / "d.txt")


def test_unreachable_hub_goes_offline_at_once(monkeypatch):
    import os
    import socket

    def refuse(*_a, **_k):
        raise OSError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(socket, "create_connection", refuse)
    data = registry.load(MATH)
    assert data.source == "sample" and os.environ["HF_HUB_OFFLINE"] == "1"


# -- the user's own data (entrain probe) ---------------------------------------------------------

USER_ROWS = [
    {"q": "What is 2 + 2?", "hard": 0, "score": 1.5},
    {"q": "What is 17 * 23?", "hard": 1, "score": 4.0},
    {"q": "What is 9 - 3?", "hard": 0, "score": None},
]


def _user(path=None, dataset=None, **kw):
    args = dict(split=None, subset=None, id_field=None, fields={"--text-field": "q"})
    return registry.load_user(dataset, path, **{**args, **kw}, default="probe")


def test_user_file_in_every_format_reads_the_same_rows(tmp_path):
    frame = pd.DataFrame(USER_ROWS)
    paths = {
        "jsonl": "\n".join(json.dumps(r) for r in USER_ROWS),
        "json": json.dumps(USER_ROWS),
    }
    for ext, text in paths.items():
        (tmp_path / f"d.{ext}").write_text(text)
    frame.to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(USER_ROWS).to_parquet(tmp_path / "d.parquet")
    for ext in ("jsonl", "json", "csv", "parquet"):
        data = _user(tmp_path / f"d.{ext}")
        assert data.source == "file" and data.ids == ["d-0", "d-1", "d-2"], ext
        assert [r["q"] for r in data.rows] == [r["q"] for r in USER_ROWS], ext
        assert [r["hard"] for r in data.rows] == [0, 1, 0], ext
        score = data.rows[2]["score"]
        assert score is None or score != score, ext  # a missing cell: None (or NaN in parquet)


def test_user_file_id_field_split_and_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{**r, "key": f"k{i}", "split": "a" if i < 2 else "b"} for i, r in enumerate(USER_ROWS)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = _user(path, id_field="key", split="b")
    assert data.ids == ["k2"] and data.split == "b"
    with pytest.raises(
        UserError,
        match=r"^--label 'difficulty' is not a field of .*d\.jsonl; "
        r"its fields: q, hard, score, key, split$",
    ):
        _user(path, fields={"--text-field": "q", "--label": "difficulty"})
    with pytest.raises(UserError, match=r"^--id-field 'nope' is not a field"):
        _user(path, id_field="nope")
    with pytest.raises(UserError, match=r"has no rows \(split c\)"):
        _user(path, split="c")
    path.write_text(json.dumps(USER_ROWS[0]) + "\n" + json.dumps({"other": 1}))
    with pytest.raises(UserError, match=r"^--text-field 'q' is missing from row 1 of"):
        _user(path)


def test_user_hub_dataset_passes_name_subset_and_split(monkeypatch):
    import datasets

    calls = []

    def fake_load(name, subset, split):
        calls.append((name, subset, split))
        return datasets.Dataset.from_list(USER_ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    data = _user(dataset="hub:someone/arith", subset="easy", split="test")
    assert calls == [("someone/arith", "easy", "test")]
    assert data.source == "hub" and data.location == "someone/arith:test"
    assert data.ids == ["arith-0", "arith-1", "arith-2"]
    with pytest.raises(UserError, match="write a hub dataset as hub:OWNER/NAME"):
        _user(dataset="hub:noslash")


def test_user_hub_dataset_that_cannot_load_is_one_line():
    with pytest.raises(UserError, match=r"^could not load nobody/nothing .*--data-file$"):
        _user(dataset="hub:nobody/nothing")


def test_no_user_data_is_the_bundled_probe_sample_loudly(caplog):
    with caplog.at_level(logging.WARNING, logger="entrain"):
        data = _user(fields={"--text-field": "text", "--label": "difficulty"})
    assert data.source == "sample" and "bundled sample" in caplog.text
    rows = data.rows
    assert len(rows) >= 24 and data.ids == [r["id"] for r in rows]
    assert {r["phrasing"] for r in rows} == {"symbolic", "verbal"}
    pairs = pd.DataFrame(rows).groupby("pair")["phrasing"].nunique()
    assert (pairs == 2).all()
    for r in rows:  # the answers are right
        if r["phrasing"] == "symbolic":
            expr = r["text"].removeprefix("What is ").removesuffix("?")
            assert eval(expr.replace("×", "*").replace("÷", "/")) == r["answer"], r["id"]


def test_invalid_utf8_in_jsonl_is_warned_naming_the_row(tmp_path, caplog):
    """Issue 23.12: bytes that are not UTF-8 become U+FFFD with a warning naming the line,
    not silently."""
    path = tmp_path / "d.jsonl"
    rows = [json.dumps(r).encode() for r in registry.load(MATH).rows[:3]]
    rows[1] = rows[1][:-1] + b', "x": "a\xffb"}'
    path.write_bytes(b"\n".join(rows) + b"\n")
    with caplog.at_level(logging.WARNING, logger="entrain"):
        data = registry.load(MATH, path)
    assert data.rows[1]["x"] == "a\ufffdb"
    assert "d.jsonl, line 2: bytes that are not UTF-8, read as U+FFFD" in caplog.text
