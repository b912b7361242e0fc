"""Beyond one GPU: vLLM's parallel options, the probe pass over a split model, shards and
their merge (the pieces; whole studies sharded and merged are in test_merge.py)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from entrainment_cli import pipeline as study
from entrainment_cli.engines import generate as gen
from entrainment_cli.engines import models
from entrainment_cli.engines.generate import Parallel
from entrainment_cli.engines.probe import HiddenProbe, batches
from entrainment_cli.engines.token_probe import TokenProbe
from entrainment_cli.errors import UserError
from entrainment_cli.runs import merge
from entrainment_cli.runs.rundir import RunDir
from entrainment_cli.runs.sharding import Shard, parse_shard, shard_of

# --------------------------------------------------------------------------------------------
# vLLM parallel options
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tensor_parallel_size": 0}, "--tensor-parallel-size must be at least 1"),
        ({"pipeline_parallel_size": -1}, "--pipeline-parallel-size must be at least 1"),
        ({"data_parallel_size": 2}, "--shard I/N"),
        ({"distributed_executor_backend": "slurm"}, "use mp (one machine) or ray"),
        ({"gpu_memory_utilization": 0.0}, "--gpu-memory-utilization must be in (0, 1]"),
        ({"gpu_memory_utilization": 1.5}, "--gpu-memory-utilization must be in (0, 1]"),
    ],
)
def test_parallel_validation(kwargs, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Parallel(**kwargs)


def test_parallel_kwargs_and_device_check(monkeypatch):
    one = Parallel()
    assert one.world_size == 1
    # One device: no executor named, as without the options (vLLM's own default).
    assert "distributed_executor_backend" not in one.llm_kwargs()
    two = Parallel(tensor_parallel_size=2, pipeline_parallel_size=3, gpu_memory_utilization=0.5)
    assert two.world_size == 6
    assert two.llm_kwargs() == {
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 3,
        "gpu_memory_utilization": 0.5,
        "distributed_executor_backend": "mp",
    }
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(UserError, match=r"size is 6, but only 4 GPU\(s\) are visible"):
        two.check_devices("cuda")
    Parallel(tensor_parallel_size=4).check_devices("cuda")
    # ray: the workers may be on other machines; vLLM checks the cluster.
    Parallel(tensor_parallel_size=8, distributed_executor_backend="ray").check_devices("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cores = len(__import__("os").sched_getaffinity(0))
    with pytest.raises(UserError, match=rf"only {cores} CPU core\(s\) are usable"):
        Parallel(tensor_parallel_size=cores + 1).check_devices("cpu")


def test_model_setup_checks_placement_before_the_run(tmp_path):
    """Every study resolves its model through ``study.model_setup`` before its run directory
    exists: a parallel size beyond the devices or a bad placement stops there."""
    cores = len(__import__("os").sched_getaffinity(0))
    with pytest.raises(UserError, match="CPU core"):
        study.model_setup(None, "cpu", "auto", parallel=Parallel(tensor_parallel_size=cores + 1))
    with pytest.raises(UserError, match="unknown --device-map"):
        study.model_setup(None, "cpu", "auto", device_map="everywhere")
    setup = study.model_setup(
        None, "cpu", "auto", device_map="auto", max_memory="cpu=8GiB", max_model_len=256
    )
    assert (setup.device_map, setup.max_memory, setup.max_model_len) == ("auto", "cpu=8GiB", 256)
    assert setup.parallel == Parallel()


def test_cpu_thread_binding_gives_each_worker_its_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4})
    assert gen._cpu_thread_binding(2) == "0,1|2,3"
    assert gen._cpu_thread_binding(5) == "0|1|2|3|4"


def test_too_many_workers_refused_before_vllm_starts(embedded, monkeypatch):
    """The device check runs before vLLM is imported or started: no engine is left behind."""
    if not gen.vllm_available():
        pytest.skip("vLLM is not installed")
    cores = len(__import__("os").sched_getaffinity(0))
    with pytest.raises(UserError, match="CPU core"):
        gen.make_engine(
            "vllm",
            embedded.path,
            batch_size=2,
            device="cpu",
            dtype=torch.float32,
            parallel=Parallel(tensor_parallel_size=cores + 1),
        )
    assert not [k for k in gen._LLMS if k[3].world_size > 1]


def test_live_engine_reports_its_parallel_configuration(vllm_engine):
    """The session engine (default options) as vLLM itself configured it."""
    config = vllm_engine.llm.llm_engine.vllm_config.parallel_config
    assert config.tensor_parallel_size == 1
    assert config.pipeline_parallel_size == 1
    assert config.data_parallel_size == 1
    assert config.world_size == 1
    assert vllm_engine.parallel == gen.ONE_DEVICE == Parallel()
    assert vllm_engine.record()["tensor_parallel_size"] == 1
    assert vllm_engine.record()["max_model_len"] == vllm_engine.max_model_len


@pytest.fixture(scope="module")
def tp_llama(embedded, tmp_path_factory) -> Path:
    """A random Llama vLLM can split in two on the CPU: 4 heads and 2 KV heads (the embedded
    SmolLM2 has 9 heads, which vLLM refuses to divide by 2), head size 64 (vLLM's CPU
    attention has no kernel for the 16 of the tiny fixtures)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(embedded.path)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tp-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_vllm_tensor_parallel_2_equals_1(tp_llama):
    """vLLM's CPU build runs tensor parallel size 2 (two worker processes, one core each):
    seeded samples and greedy tokens equal size 1's, log-probs within float tolerance."""
    if not gen.vllm_available():
        pytest.skip("vLLM is not installed")
    if len(__import__("os").sched_getaffinity(0)) < 2:
        pytest.skip("tensor parallel size 2 needs 2 CPU cores")
    prompts = [[1, 504, 3458, 282, 4649, 314], [1, 22, 23, 24], [1, 9000, 9001, 9002, 9003]]
    keys = ["a", "b", "c"]
    out = {}
    try:
        for size in (1, 2):
            engine = gen.make_engine(
                "vllm",
                tp_llama,
                batch_size=4,
                device="cpu",
                dtype=torch.float32,
                max_model_len=64,
                parallel=Parallel(tensor_parallel_size=size),
            )
            config = engine.llm.llm_engine.vllm_config.parallel_config
            assert (config.tensor_parallel_size, config.world_size) == (size, size)
            assert engine.record()["tensor_parallel_size"] == size
            out[size] = [
                engine.generate(prompts, keys, gen.Sampling(temperature=t, max_tokens=8, seed=3))
                for t in (1.0, 0.0)
            ]
            gen.close_engines(tp_llama)
    finally:
        gen.close_engines(tp_llama)
    for sampled_1, sampled_2 in zip(out[1], out[2], strict=True):
        for one, two in zip(sampled_1, sampled_2, strict=True):
            assert one.token_ids == two.token_ids and len(one.token_ids) > 0
            torch.testing.assert_close(
                torch.tensor(two.logprobs), torch.tensor(one.logprobs), rtol=0, atol=1e-4
            )


# --------------------------------------------------------------------------------------------
# The probe pass with the model's layers split over devices
# --------------------------------------------------------------------------------------------


def test_placement_options():
    assert models.placement("cpu") == {}
    assert models.placement("cuda", "balanced", "0=20GiB,1=20GiB,cpu=64GiB") == {
        "device_map": "balanced",
        "max_memory": {0: "20GiB", 1: "20GiB", "cpu": "64GiB"},
    }
    with pytest.raises(UserError, match="unknown --device-map 'sequential'"):
        models.placement("cuda", "sequential")
    with pytest.raises(UserError, match="--max-memory needs --device-map"):
        models.placement("cuda", None, "0=1GiB")
    with pytest.raises(UserError, match="--max-memory: cannot read 'gpu0=1GiB'"):
        models.placement("cuda", "auto", "gpu0=1GiB")
    with pytest.raises(UserError, match="--max-memory: cannot read '0'"):
        models.placement("cuda", "auto", "0")


def _split_map(n_blocks: int) -> dict[str, str]:
    """The first half of the blocks in memory, the rest offloaded to disk: accelerate then
    places hooks that bring each offloaded block's weights in for its forward, as it moves
    activations between GPUs for a multi-GPU map."""
    out = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu"}
    out |= {f"model.layers.{i}": "cpu" if i < n_blocks // 2 else "disk" for i in range(n_blocks)}
    return out | {"lm_head": "cpu"}


def test_probes_on_a_split_model_equal_the_whole_model(tiny_llama):
    resolved = models.ResolvedModel("tiny", tiny_llama, "local")
    whole, tok = models.load_model(resolved, "cpu", torch.float32)
    split, _ = models.load_model(resolved, "cpu", torch.float32, device_map=_split_map(3))
    assert set(split.hf_device_map.values()) == {"cpu", "disk"}
    assert split.model.layers[2].mlp.up_proj.weight.device.type == "meta"  # really offloaded

    prompts = [tok(t)["input_ids"] for t in ("The sky is", "Two plus two is four, and then")]
    layers, positions = [0, 1, 2, 3, -1], ["last-prompt", "mean-prompt"]
    results = []
    for model in (whole, split):
        probe = HiddenProbe(model, layers, positions, logit_ids=[10, 20, 30])
        batch = next(batches(prompts, 2, tok.pad_token_id, "cpu"))
        measured = probe.measure(batch.input_ids, batch.attention_mask, ["l1", "gini"])
        token = TokenProbe(model, 0.9, hidden_layers=[1, 3], hidden_metrics=["hoyer"])
        gens = [[5, 6, 7], [8, 9]]
        results.append(
            (measured, probe.logits, token.measure(prompts, gens, tok.pad_token_id, "cpu"))
        )
    (m_whole, logits_whole, t_whole), (m_split, logits_split, t_split) = results
    assert m_whole.keys() == m_split.keys() and len(m_whole) == len(layers) * len(positions)
    for key in m_whole:
        for name in ("l1", "gini"):
            torch.testing.assert_close(m_split[key][name], m_whole[key][name])
    torch.testing.assert_close(logits_split, logits_whole)
    assert t_whole.keys() == t_split.keys() and {"h1_hoyer", "h3_hoyer", "stops"} <= t_whole.keys()
    for key in t_whole:
        torch.testing.assert_close(t_split[key], t_whole[key], equal_nan=True)


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------


def test_shard_of_is_sha256_of_the_id():
    for example_id in ("a", "test/algebra/1.json", 17):
        digest = hashlib.sha256(str(example_id).encode()).digest()
        assert shard_of(example_id, 7) == int.from_bytes(digest[:8], "big") % 7
    assert shard_of("x", 1) == 0


def test_shard_split_is_the_same_in_another_process():
    ids = [f"q{i}" for i in range(50)]
    here = [shard_of(i, 4) for i in ids]
    code = (
        "from entrainment_cli.runs.sharding import shard_of;"
        f"print([shard_of(i, 4) for i in {ids!r}])"
    )
    there = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PYTHONPATH": str(Path(__file__).parents[1])},
    ).stdout
    assert eval(there) == here
    shards = [Shard(i, 4).select(ids) for i in range(4)]
    assert sorted(sum(shards, [])) == list(range(50))  # every example once
    assert all(shards)  # 50 ids over 4 shards: none empty


@pytest.mark.parametrize(
    "spec, message",
    [
        ("1", "is not I/N"),
        ("a/b", "is not I/N"),
        ("-1/4", "is not I/N"),
        ("4/4", "0 <= I < N"),
        ("0/0", "0 <= I < N"),
    ],
)
def test_parse_shard_errors(spec, message):
    with pytest.raises(UserError, match=message):
        parse_shard(spec)


def test_parse_shard():
    assert parse_shard(None) is None
    assert parse_shard(" 2 / 5") == Shard(2, 5)
    assert str(Shard(2, 5)) == "2/5"


# --------------------------------------------------------------------------------------------
# Merge (on hand-made shard runs; real studies in test_merge.py)
# --------------------------------------------------------------------------------------------

IDS = [f"ex{i}" for i in range(12)]


def _shard_run(root: Path, index: int, count: int, identity=None, ids=IDS, done=True) -> Path:
    path = root / f"shard{index}of{count}"
    identity = identity or {"model": "m", "dataset": "fp", "layers": [-1]}
    rd = RunDir.open(
        command="qa rankmath",
        identity={**identity, "shard": f"{index}/{count}"},
        run_dir=path,
        runs_dir=None,
        name_parts=[],
        resume=False,
    )
    with rd:
        rd.update(seed=0, model={"weights_sha256": "w"}, dataset={"fingerprint": "fp"})
        rd.write_text("config.yaml", "seed: 0\n")  # a study's shard holds its options
        keep = merge.record_selection(rd, Shard(index, count), ids)
        rows = [(ids[i], layer) for i in keep for layer in (0, -1)]
        rd.write_table(
            "samples",
            pd.DataFrame({"id": [r[0] for r in rows], "layer": [r[1] for r in rows]}).assign(
                l1=lambda f: f["id"].str[2:].astype(float) + f["layer"]
            ),
        )
    if not done:
        rd.update(status="failed")
    return path


def test_merge_orders_examples_as_the_unsharded_run(tmp_path):
    runs = [_shard_run(tmp_path, i, 3) for i in (2, 0, 1)]
    shards = merge.check_shards(runs)
    assert shards.count == 3 and shards.order == IDS
    assert [r.name for r in shards.runs] == ["shard0of3", "shard1of3", "shard2of3"]
    merged = merge.merge_table(shards, "samples")
    want = pd.DataFrame({"id": [i for i in IDS for _ in (0, -1)], "layer": [0, -1] * len(IDS)})
    want["l1"] = want["id"].str[2:].astype(float) + want["layer"]
    pd.testing.assert_frame_equal(merged, want)
    assert merge.merge_table(shards, "no_such_table") is None
    manifest = shards.manifests[1]
    assert manifest["shard"]["index"] == 1 and manifest["shard"]["count"] == 3
    assert manifest["shard"]["selected"] == len(IDS)


def test_shared_table_is_one_copy_of_equal_tables(tmp_path):
    runs = [_shard_run(tmp_path, i, 2) for i in range(2)]
    pool = pd.DataFrame({"id": ["p1", "p2"], "score": [0.5, 0.25]})
    for run in runs:
        pool.to_parquet(run / "tables" / "pool.parquet")
    shards = merge.check_shards(runs)
    pd.testing.assert_frame_equal(merge.shared_table(shards, "pool"), pool)
    assert merge.shared_table(shards, "absent") is None
    pool.assign(score=[0.5, 0.3]).to_parquet(runs[1] / "tables" / "pool.parquet")
    with pytest.raises(UserError, match="pool.parquet differs between"):
        merge.shared_table(shards, "pool")
    (runs[1] / "tables" / "pool.parquet").unlink()
    with pytest.raises(UserError, match="only some shards have tables/pool.parquet"):
        merge.shared_table(shards, "pool")


def test_open_merged_records_the_run_without_its_shard(tmp_path):
    runs = [_shard_run(tmp_path, i, 2) for i in range(2)]
    shards = merge.check_shards(runs)
    out = tmp_path / "merged"
    with merge.open_merged(shards, out) as rd:
        rd.write_table("samples", merge.merge_table(shards, "samples"))
    manifest = __import__("json").loads((out / "manifest.json").read_text())
    assert manifest["command"] == "qa rankmath" and manifest["status"] == "done"
    assert manifest["identity"] == {"model": "m", "dataset": "fp", "layers": [-1], "shard": None}
    assert "shard" not in manifest
    assert [m["shard"]["index"] for m in manifest["merged_from"]] == [0, 1]
    assert manifest["model"] == {"weights_sha256": "w"} and manifest["seed"] == 0
    assert len(pd.read_parquet(out / "tables" / "samples.parquet")) == 2 * len(IDS)
    with pytest.raises(UserError, match="is not empty"):
        merge.open_merged(shards, out)


def test_merge_refusals(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    runs = [_shard_run(a, i, 3) for i in range(3)]
    with pytest.raises(UserError, match=r"shard\(s\) 2/3 missing"):
        merge.check_shards(runs[:2])
    with pytest.raises(UserError, match="shard 1/3 is given twice"):
        merge.check_shards([runs[0], runs[1], runs[1]])
    other = _shard_run(b, 2, 3, identity={"model": "m", "dataset": "fp", "layers": [0]})
    with pytest.raises(UserError, match=r"settings differ \(layers: 0 vs -1\)"):
        merge.check_shards([*runs[:2], other])
    four = _shard_run(b, 2, 4)
    with pytest.raises(UserError, match="numbers of shards differ"):
        merge.check_shards([*runs[:2], four])
    fewer = _shard_run(tmp_path / "c", 2, 3, ids=IDS[:-1])
    with pytest.raises(UserError, match="selected different examples"):
        merge.check_shards([*runs[:2], fewer])
    failed = _shard_run(tmp_path / "d", 2, 3, done=False)
    with pytest.raises(UserError, match="not finished"):
        merge.check_shards([*runs[:2], failed])
    with pytest.raises(UserError, match="not a run directory"):
        merge.check_shards([tmp_path])


# --------------------------------------------------------------------------------------------
# bench/gpu.sh, in its tiny CPU mode
# --------------------------------------------------------------------------------------------


def test_gpu_bench_script_runs_every_row_in_tiny_mode(tmp_path):
    root = Path(__file__).parents[1]
    out = tmp_path / "bench"
    env = {
        **__import__("os").environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(root),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        ["bash", str(root / "bench" / "gpu.sh"), "--tiny", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split()[0] for line in (out / "times.txt").read_text().splitlines()]
    benches = ("probe", "correlate", "samples", "robustness", "cot", "longreason", "scaling")
    assert rows == ["model-tiny", *(f"{b}-tiny" for b in benches), "pretrain"]
    written = {p.name.split("-")[0] for p in (out / "tiny").glob("*.json")}
    assert set(benches) <= written
    assert list((out / "pretrain").glob("pretrain-*.json"))
    scaling = __import__("json").loads((out / "tiny" / "scaling-cpu.json").read_text())
    assert scaling["shards"] == 2 and scaling["problems"] == 8
    assert scaling["speedup"] == pytest.approx(scaling["one_process_s"] / scaling["sharded_s"])
    assert not (out / "models" / "tiny").exists()  # the random model is removed after its rows
