"""--save-hidden (runs/hidden.py): the probed vectors saved float16 beside the tables, read
back by numpy and torch without entrain, equal to an independent output_hidden_states pass,
complete after an interrupted run is resumed and after `entrain merge` of shards."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from entrainment_cli.runs import hidden


def _invoke(*args):
    from typer.testing import CliRunner

    from entrainment_cli.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_batches_round_trip_in_numpy_and_torch(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 8)), rng.normal(size=(2, 8))
    hidden.write_hidden(tmp_path, "samples", ["x", "y", "z"], {(-1, "last-prompt"): a})
    path = hidden.write_hidden(tmp_path, "samples", ["y", "w"], {(-1, "last-prompt"): b})
    assert path == tmp_path / "tables" / "hidden" / "samples" / "000001.safetensors"
    ids, x = hidden.read_hidden(tmp_path)
    assert ids == ["x", "y", "z", "w"] and x.dtype == np.float16
    # y was saved twice (a redone example): its last vector wins, in its first place
    assert x == pytest.approx(np.vstack([a[0], b[0], a[2], b[1]]).astype(np.float16))
    # without entrain: safetensors' numpy and torch readers, the ids in the metadata
    assert load_file(path)["h-1_last-prompt"] == pytest.approx(b.astype(np.float16))
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["ids"]) == ["y", "w"]
        assert f.get_tensor("h-1_last-prompt").dtype == torch.float16


def test_values_beyond_float16_are_inf_and_told(tmp_path, caplog):
    v = np.array([[1.0, 7e4], [-1e5, 2.0]])
    with caplog.at_level(logging.WARNING, logger="entrain"):
        hidden.write_hidden(tmp_path, "samples", [0, 1], {(3, "mean-prompt"): v})
    assert "2 value(s) at layer 3, mean-prompt exceed float16's range" in caplog.text
    ids, x = hidden.read_hidden(tmp_path, layer=3, position="mean-prompt")
    assert ids == [0, 1] and x.tolist() == [[1.0, np.inf], [-np.inf, 2.0]]


def test_a_damaged_file_is_skipped_and_copies_are_renumbered(tmp_path, caplog):
    src, dst = tmp_path / "shard", tmp_path / "merged"
    hidden.write_hidden(src, "samples", [1], {(-1, "last-prompt"): np.ones((1, 4))})
    hidden.write_hidden(dst, "samples", [2], {(-1, "last-prompt"): np.zeros((1, 4))})
    hidden.copy_hidden(src, dst)
    files = sorted(p.name for p in (dst / hidden.HIDDEN / "samples").iterdir())
    assert files == ["000000.safetensors", "000001.safetensors"]
    assert hidden.read_hidden(dst)[0] == [2, 1]
    (dst / hidden.HIDDEN / "samples" / "000002.safetensors").write_bytes(b"cut short")
    with caplog.at_level(logging.WARNING, logger="entrain"):
        assert hidden.read_hidden(dst)[0] == [2, 1]
    assert "000002.safetensors unreadable" in caplog.text
    with pytest.raises(FileNotFoundError):
        hidden.read_hidden(dst, layer=5)


ARGS = (
    "--template", "Question: {text}", "--no-chat", "--id-field", "id", "--label", "difficulty",
    "--layers", "0,-1", "--positions", "last-prompt,mean-prompt", "--metrics", "l1",
    "--batch-size", "5", "--n-boot", "50", "--save-hidden", "--quiet",
)  # fmt: skip


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    from entrainment_cli.data import registry

    rows = registry.sample_path(registry.get_spec("probe")).read_text().splitlines()
    path = tmp_path_factory.mktemp("data") / "arith.csv"
    pd.DataFrame([json.loads(r) for r in rows]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def saved_run(tiny_llama, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("hidden") / "run"
    result = _invoke(
        "probe", "--model", tiny_llama, "--data-file", data_file, *ARGS, "--run-dir", out
    )
    assert result.exit_code == 0, result.output
    return out


def test_saved_vectors_equal_output_hidden_states(saved_run, tiny_llama):
    samples = pd.read_parquet(saved_run / "tables" / "samples.parquet")
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    for layer, index in ((0, 0), (-1, -1)):
        for position in ("last-prompt", "mean-prompt"):
            ids, x = hidden.read_hidden(saved_run, "samples", layer, position)
            assert sorted(ids) == sorted(samples["id"].unique()) and x.dtype == np.float16
            for i in range(0, len(ids), 6):
                prompt = samples.loc[samples.id == ids[i], "prompt"].iloc[0]
                enc = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
                with torch.no_grad():
                    h = model(enc, output_hidden_states=True).hidden_states[index][0]
                want = (h[-1] if position == "last-prompt" else h.mean(0)).numpy()
                assert x[i].astype(np.float32) == pytest.approx(want, rel=2e-3, abs=2e-3)


def test_interrupted_run_resumes_with_every_vector(
    saved_run, ctrl_c, tiny_llama, data_file, tmp_path
):
    """Ctrl-C in the third batch, then --resume: the same vectors as the whole run's."""
    from entrainment_cli.engines.probe import HiddenProbe

    part = tmp_path / "part"
    args = ("probe", "--model", tiny_llama, "--data-file", data_file, *ARGS, "--run-dir", part)
    with ctrl_c(HiddenProbe, "measure", 3):
        assert _invoke(*args).exit_code == 130
    assert len(hidden.read_hidden(part)[0]) == 10  # two batches of 5 before the interruption
    assert _invoke(*args, "--resume").exit_code == 0
    whole_ids, whole = hidden.read_hidden(saved_run)
    ids, x = hidden.read_hidden(part)
    order = [ids.index(i) for i in whole_ids]
    assert sorted(ids) == sorted(whole_ids) and (x[order] == whole).all()


def test_merged_shards_keep_every_vector(saved_run, tiny_llama, data_file, tmp_path):
    runs = []
    for i in range(2):
        runs.append(tmp_path / f"shard{i}")
        args = ("probe", "--model", tiny_llama, "--data-file", data_file, *ARGS)
        assert _invoke(*args, "--shard", f"{i}/2", "--run-dir", runs[-1]).exit_code == 0
    assert _invoke("merge", *runs, "--out", tmp_path / "merged", "--quiet").exit_code == 0
    whole_ids, whole = hidden.read_hidden(saved_run)
    ids, x = hidden.read_hidden(tmp_path / "merged")
    assert sorted(ids) == sorted(whole_ids)
    order = [ids.index(i) for i in whole_ids]  # other batches: float32 moves in its last bits
    assert x[order].astype(np.float32) == pytest.approx(whole.astype(np.float32), abs=1e-2)


def test_a_declared_probe_study_saves_its_positions(tiny_llama, tmp_path):
    """qa rankmath (a ProbeStudy): one vector per example at each layer and position."""
    out = tmp_path / "run"
    result = _invoke(
        "qa", "rankmath", "--model", tiny_llama, "--limit", "1", "--layers", "0,-1",
        "--positions", "last-prompt,mean-prompt", "--metrics", "l1", "--n-boot", "20",
        "--save-hidden", "--run-dir", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    samples = pd.read_parquet(out / "tables" / "samples.parquet")
    for layer in (0, -1):
        for position in ("last-prompt", "mean-prompt"):
            ids, x = hidden.read_hidden(out, "samples", layer, position)
            assert sorted(ids) == sorted(samples["id"].unique()) and x.shape[1] == 64


def test_the_size_told_before_the_run_is_the_size_saved(tiny_llama, data_file, tmp_path):
    """Issue 21.1: the estimate told before the run directory exists equals the bytes of the
    float16 vectors the run then writes (2 layers x 2 positions here)."""
    out = tmp_path / "run"
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # the entrain logger does not propagate to caplog
    logging.getLogger("entrain").addHandler(handler)
    try:
        args = ("probe", "--model", tiny_llama, "--data-file", data_file, *ARGS)
        assert _invoke(*args, "--limit", "7", "--run-dir", out).exit_code == 0
    finally:
        logging.getLogger("entrain").removeHandler(handler)
    told = [r.getMessage() for r in records if r.getMessage().startswith("--save-hidden")]
    assert told == ["--save-hidden: 7 example(s) x 2 layer(s) x 2 position(s) x 64 dims in "
                    "float16, about 3.5 KiB in tables/hidden"]  # fmt: skip
    assert told[0] in (out / "run.log").read_text()  # told before the run, kept in its log
    saved = sum(
        hidden.read_hidden(out, "samples", layer, position)[1].nbytes
        for layer in (0, -1)
        for position in ("last-prompt", "mean-prompt")
    )
    assert saved == hidden.estimate(7, 64, [0, -1], ["last-prompt", "mean-prompt"]) == 3584
