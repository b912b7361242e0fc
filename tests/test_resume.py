"""The run's identity and --resume (issues 22 and 23): every option and every model file that
changes a number is in the identity; `--resume --run-dir R` continues R with R's own options;
a damaged shard's examples are redone everywhere they count as done. Each fault reproduced as
the issue wrote it, then shown fixed."""

import dataclasses
import hashlib
import os
import shutil

import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

from entrainment_cli import options
from entrainment_cli.data import registry
from entrainment_cli.engines import models
from entrainment_cli.engines.generate import HFEngine
from entrainment_cli.engines.probe import HiddenProbe
from entrainment_cli.engines.token_probe import TokenProbe
from entrainment_cli.errors import UserError
from entrainment_cli.runs.rundir import RunDir, read_manifest
from entrainment_cli.studies import STUDIES

# -- 23.1: every option that changes a number is in the identity -------------------------------

WHERE_AND_HOW = "where the run goes or how it talks: no number depends on it"
PLACEMENT = (
    "how the same computation is placed and batched (devices, parallelism, batch size, kernels): "
    "float rounding may differ, the computation does not; left free so a resumed or merged run "
    "may use other hardware"
)
DATA = "its rows are in the identity as the data's fingerprint (a moved file is the same data)"
# Every option outside the identity, with the reason. A new option fails the test below until
# it is declared identity=True or given its reason here.
NOT_IDENTITY = {
    "run_dir": WHERE_AND_HOW,
    "runs_dir": WHERE_AND_HOW,
    "resume": WHERE_AND_HOW,
    "log_to": WHERE_AND_HOW,
    "quiet": WHERE_AND_HOW,
    "save_every": "when pretrain saves its state; a resumed run equals an unbroken one (tested)",
    "device": PLACEMENT + "; the dtype it implies is in the identity, resolved",
    "device_map": PLACEMENT,
    "max_memory": PLACEMENT,
    "tensor_parallel_size": PLACEMENT,
    "pipeline_parallel_size": PLACEMENT,
    "data_parallel_size": PLACEMENT,
    "distributed_executor_backend": PLACEMENT,
    "gpu_memory_utilization": PLACEMENT,
    "batch_size": PLACEMENT + " (pretrain's batch size is the training's: identity there)",
    "eval_batch_size": PLACEMENT,
    "compile": PLACEMENT,
    "data_file": DATA,
    "dataset": DATA,
    "split": DATA,
    "subset": DATA,
    "pool_file": "the pool's rows are in the identity as its fingerprint ('pool')",
    "curriculum": "shorthand for --strategy curriculum; the strategy it resolves to is identity",
}


def test_every_option_is_in_the_identity_or_has_a_reason_not_to_be():
    """Walks every option of every study: one that is neither identity nor reasoned out above
    fails, so a new option (like --max-model-len once) cannot silently escape the identity."""
    used = set()
    for entry in STUDIES:
        for f in options.option_fields(entry.config):
            if not f.metadata["identity"]:
                assert f.name in NOT_IDENTITY, (
                    f"{entry.name} {options.flag(f)} is outside the run's identity with no "
                    "reason: declare it identity=True if it changes any number, else add it to "
                    "NOT_IDENTITY with why it cannot"
                )
                used.add(f.name)
    assert used == set(NOT_IDENTITY)  # no stale reasons
    for name in ("max_model_len", "n_boot", "seed", "bins", "min_nucleus", "model"):
        assert all(
            options.field_of(e.config, name).metadata["identity"]
            for e in STUDIES
            if name in {f.name for f in dataclasses.fields(e.config)}
        ), name


def _probe(cli, model, run_dir, *extra):
    return cli(
        "probe", "--model", model, "--run-dir", run_dir, "--no-chat", "--metrics", "l1",
        "--n-boot", "20", "--engine", "hf", "--quiet", *extra,
    )  # fmt: skip


CAP = ("--limit", "40", "--batch-size", "8", "--max-tokens", "24", "--max-model-len", "32")


def test_max_model_len_is_kept_on_resume_and_changing_it_is_refused(
    cli, ctrl_c, tiny_llama, tmp_path
):
    """Killed after the first generation shard (32 of 40 rows) at --max-model-len 32, then
    resumed without the flag: all 40 rows are capped and the manifest says so."""
    run = tmp_path / "R"
    with ctrl_c(HFEngine, "generate", 2):
        assert _probe(cli, tiny_llama, run, *CAP).exit_code == 130
    assert len(pd.read_parquet(next((run / "tables/shards/generations").iterdir()))) == 32

    result = cli("probe", "--resume", "--run-dir", run, "--quiet")
    assert result.exit_code == 0, result.output
    m = read_manifest(run)
    assert m["identity"]["max_model_len"] == 32 and m["options"]["max_model_len"] == 32
    prompts = pd.read_parquet(run / "tables" / "prompts.parquet")
    assert len(prompts) == 40
    total = prompts["prompt_token_ids"].map(len) + prompts["n_tokens"]
    assert (total <= 32).all() and (prompts["n_tokens"] < 24).any()

    result = cli("probe", "--resume", "--run-dir", run, "--max-model-len", "64", "--quiet")
    assert result.exit_code == 2
    assert "different settings (--max-model-len: 32 -> 64)" in " ".join(result.output.split())


def test_merge_refuses_shards_of_different_caps(cli, tiny_llama, tmp_path):
    small = ("--limit", "6", "--max-tokens", "4")
    a, b = tmp_path / "a", tmp_path / "b"
    assert (
        _probe(cli, tiny_llama, a, *small, "--shard", "0/2", "--max-model-len", "64").exit_code == 0
    )
    assert _probe(cli, tiny_llama, b, *small, "--shard", "1/2").exit_code == 0
    result = cli("merge", a, b, "--out", tmp_path / "m", "--quiet")
    assert result.exit_code == 2
    assert "max_model_len: not given vs 64" in " ".join(result.output.split())


# -- 23.2 and 23.3: every model file is in the identity, however it was replaced ---------------


def _interrupted_probe(cli, ctrl_c, model, run, *extra):
    """A probe of 6 rows killed by Ctrl-C in its second batch of 2."""
    with ctrl_c(HiddenProbe, "measure", 2):
        result = cli(
            "probe", "--model", model, "--run-dir", run, "--limit", "6", "--batch-size", "2",
            "--metrics", "l1", "--n-boot", "20", "--quiet", *extra,
        )  # fmt: skip
    assert result.exit_code == 130


def test_resume_refuses_a_changed_chat_template(cli, ctrl_c, tiny_llama, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    run = tmp_path / "R"
    _interrupted_probe(cli, ctrl_c, model, run)
    template = model / "chat_template.jinja"
    assert "SmolLM" in template.read_text()  # the default system prompt
    template.write_text(template.read_text().replace("SmolLM", "OtherLM"))

    result = cli("probe", "--resume", "--run-dir", run, "--quiet")
    assert result.exit_code == 2
    assert "config_tokenizer_sha256" in result.output and "Traceback" not in result.output
    assert len(pd.read_parquet(next((run / "tables/shards/samples").iterdir()))) == 2  # kept


def test_resume_refuses_weights_replaced_with_size_and_mtime_kept(
    cli, ctrl_c, tiny_llama, tmp_path
):
    """As `cp -p` or `rsync -a` replace a file: other bytes, same size, same mtime."""
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    run = tmp_path / "R"
    _interrupted_probe(cli, ctrl_c, model, run)
    weights = model / "model.safetensors"
    before = weights.stat()
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, tmp_path / "other.safetensors", metadata={"format": "pt"})
    weights.write_bytes((tmp_path / "other.safetensors").read_bytes())  # in place, as cp -p
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = weights.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )

    result = cli("probe", "--resume", "--run-dir", run, "--quiet")
    assert result.exit_code == 2 and "weights_sha256" in result.output
    assert models.weights_hash(model) == hashlib.sha256(weights.read_bytes()).hexdigest()


# -- 23.4: a damaged shard's examples are redone everywhere they count as done ----------------


def _damage(shard):
    shard.write_bytes(shard.read_bytes()[:100])  # cut short, as by a crash


def _tables(run, names):
    return {n: pd.read_parquet(run / "tables" / f"{n}.parquet") for n in names}


def test_probe_redoes_the_tokens_of_a_damaged_tokens_shard(cli, tiny_peaked, tmp_path):
    run = tmp_path / "R"
    args = ("--limit", "4", "--batch-size", "2", "--max-tokens", "6")
    assert _probe(cli, tiny_peaked, run, *args).exit_code == 0
    before = _tables(run, ["tokens", "token_summary"])
    assert (before["token_summary"]["n_tokens"] > 0).all()
    _damage(run / "tables" / "shards" / "tokens" / "000000.parquet")

    result = cli("probe", "--resume", "--run-dir", run, "--quiet")
    assert result.exit_code == 0, result.output
    after = _tables(run, ["tokens", "token_summary"])
    for name, table in before.items():
        pd.testing.assert_frame_equal(after[name], table)


def test_correlate_redoes_a_damaged_tokens_shard(cli, tiny_peaked, tmp_path):
    run = tmp_path / "R"
    result = cli(
        "correlate", "--model", tiny_peaked, "--run-dir", run, "--engine", "hf", "--limit", "4",
        "--max-tokens", "8", "--batch-size", "4", "--n-boot", "20", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    before = _tables(run, ["tokens"])
    (shard,) = (run / "tables" / "shards" / "tokens").iterdir()  # one batch: every token
    _damage(shard)

    real, probed = TokenProbe.measure, []

    def counting(self, prompts, *a, **kw):
        probed.append(len(prompts))
        return real(self, prompts, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TokenProbe, "measure", counting)
        result = cli("correlate", "--resume", "--run-dir", run, "--quiet")
    assert result.exit_code == 0, result.output
    assert sum(probed) == 4  # every prompt probed again, nothing generated again
    pd.testing.assert_frame_equal(_tables(run, ["tokens"])["tokens"], before["tokens"])


# -- 22.1: --resume --run-dir R continues R with R's saved options ----------------------------


def _rankmath(cli, model, run, *extra):
    return cli(
        "qa", "rankmath", "--model", model, "--run-dir", run, "--limit", "4",
        "--metrics", "l1", "--n-boot", "20", "--batch-size", "4", "--quiet", *extra,
    )  # fmt: skip


def test_the_interrupt_hint_resumes_the_run_as_it_was_started(cli, ctrl_c, tiny_llama, tmp_path):
    whole, run = tmp_path / "whole", tmp_path / "R"
    assert _rankmath(cli, tiny_llama, whole).exit_code == 0
    with ctrl_c(HiddenProbe, "measure", 3):
        result = _rankmath(cli, tiny_llama, run)
    assert result.exit_code == 130
    hint = f"continue it with --resume --run-dir {run}"
    assert hint in " ".join(result.output.split())

    result = cli("qa", "rankmath", *hint.split()[3:], "--quiet")  # exactly the hint
    assert result.exit_code == 0, result.output
    m = read_manifest(run)
    assert m["status"] == "done" and m["counts"]["already_done"] == 8
    assert m["identity"] == read_manifest(whole)["identity"]
    for table in ("samples.parquet", "summary.csv"):
        read = pd.read_parquet if table.endswith(".parquet") else pd.read_csv
        pd.testing.assert_frame_equal(read(run / "tables" / table), read(whole / "tables" / table))

    # an option outside the identity may change; one that changes the numbers is refused
    assert cli("qa", "rankmath", "--resume", "--run-dir", run, "--batch-size", "3").exit_code == 0
    result = cli("qa", "rankmath", "--resume", "--run-dir", run, "--limit", "8", "--n-boot", "30")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "different settings (--limit: 4 -> 8; --n-boot: 20 -> 30)" in text
    assert read_manifest(run)["status"] == "done"


def test_resume_is_checked_before_anything_loads(cli, tiny_llama, tmp_path, monkeypatch):
    def no_loading(*a, **kw):
        raise AssertionError("the data were loaded")

    monkeypatch.setattr(registry, "load", no_loading)
    result = cli("qa", "rankmath", "--model", tiny_llama, "--resume", "--quiet")
    assert result.exit_code == 2 and "--resume needs --run-dir" in result.output
    result = cli("qa", "rankmath", "--resume", "--run-dir", tmp_path / "none", "--quiet")
    assert result.exit_code == 2 and "holds no manifest.json" in result.output
    other = tmp_path / "other"
    with RunDir.open(
        command="qa deepmath",
        identity={},
        run_dir=other,
        runs_dir=None,
        name_parts=[],
        resume=False,
    ):
        pass
    result = cli("qa", "rankmath", "--resume", "--run-dir", other, "--quiet")
    assert result.exit_code == 2 and "is a 'qa deepmath' run, not 'qa rankmath'" in result.output


def test_a_changed_identity_reads_not_given_for_none(tmp_path):
    args = dict(command="c", run_dir=tmp_path / "r", runs_dir=None, name_parts=[])
    with RunDir.open(identity={"limit": 4, "layers": [0, -1]}, resume=False, **args):
        pass
    with pytest.raises(UserError) as e:
        RunDir.open(identity={"limit": None, "layers": [0, -1]}, resume=True, **args)
    assert "(limit: 4 -> not given)" in str(e.value) and "None" not in str(e.value)
