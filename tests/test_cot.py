"""`entrain cot` end to end on a tiny random Llama (hf engine) and once on vLLM, checked
against independent computations."""

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from test_sparsity import reference
from transformers import AutoModelForCausalLM, AutoTokenizer

from entrainment_cli.cot.run import SYSTEM_PROMPT, USER_SUFFIX
from entrainment_cli.data import registry
from entrainment_cli.engines import embed
from entrainment_cli.engines.generate import row_seed
from entrainment_cli.runs.rundir import RunDir, read_manifest
from entrainment_cli.science import curriculum
from entrainment_cli.science.answers import extract_boxed, math_equal
from entrainment_cli.science.stats import wilson_interval

LIMIT, POOL = 6, 20
GENERATIONS = [
    "id", "sparsity_level", "score", "subject", "level", "strategy", "demo_ids", "prompt", "output",
    "extracted", "answer", "correct", "tokens", "n_prompt_tokens", "finish_reason",
]  # fmt: skip


def _args(model, run_dir, *extra):
    return [
        "cot", "--model", str(model), "--run-dir", str(run_dir), "--sample", str(LIMIT),
        "--pool-size", str(POOL), "--max-tokens", "8", "--engine", "hf", "--batch-size", "4",
        "--quiet", *extra,
    ]  # fmt: skip


def _invoke(*args):
    from typer.testing import CliRunner

    from entrainment_cli.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def curriculum_run(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("cot") / "curriculum"
    result = _invoke(*_args(tiny_llama, out, "--curriculum"))
    assert result.exit_code == 0, result.output
    return out


def _tables(run):
    t = run / "tables"
    return (
        pd.read_parquet(t / "ranking.parquet"),
        pd.read_parquet(t / "demos.parquet"),
        pd.read_parquet(t / "generations.parquet"),
        json.loads((t / "summary.json").read_text()),
    )


def test_ranking_scores_match_an_independent_pass(curriculum_run, tiny_llama):
    ranking, *_ = _tables(curriculum_run)
    assert list(ranking.columns) == [
        "role", "id", "problem", "subject", "level", "n_prompt_tokens", "metric", "score",
        "sparser_when", "sparsity_level",
    ]  # fmt: skip
    assert ranking["role"].value_counts().to_dict() == {"pool": POOL, "test": LIMIT}
    assert set(ranking["metric"]) == {"l0_outlier"} and set(ranking["sparser_when"]) == {"lower"}
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    for row in ranking.iloc[[0, 7, POOL, POOL + LIMIT - 1]].itertuples():
        # the zero-shot prompt the model answers, not a separate ranking prompt
        chat = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": row.problem + USER_SUFFIX},
        ]
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        assert ids.shape[1] == row.n_prompt_tokens
        with torch.no_grad():
            h = model(ids, output_hidden_states=True).hidden_states[-1][0, -1].numpy()
        assert row.score == pytest.approx(reference("l0_outlier", h), abs=1e-7)


def test_levels_are_pool_quantile_bins_sparser_harder(curriculum_run):
    ranking, *_ = _tables(curriculum_run)
    pool = ranking[ranking.role == "pool"]
    # tied scores share a level, so a discrete metric may leave a level empty
    assert set(pool["sparsity_level"]) <= {1, 2, 3, 4, 5} and pool["sparsity_level"].nunique() >= 3
    hard = -ranking["score"].to_numpy()  # l0_outlier: lower = sparser = harder
    levels = ranking["sparsity_level"].to_numpy()
    pool_hard, pool_levels = -pool["score"].to_numpy(), pool["sparsity_level"].to_numpy()
    for h, level in zip(hard, levels, strict=True):  # consistent with every pool problem
        assert (pool_levels[pool_hard < h] <= level).all()
        assert (pool_levels[pool_hard > h] >= level).all()
    for k in range(1, 5):  # level <= k exactly up to the pool's k/5 quantile of hardness
        q = np.quantile(pool_hard, k / 5)
        assert (levels[hard <= q] <= k).all() and (levels[hard > q] > k).all()


def test_demos_follow_the_bands(curriculum_run):
    ranking, demos, gens, _ = _tables(curriculum_run)
    pool = ranking[ranking.role == "pool"].reset_index(drop=True)
    test = ranking[ranking.role == "test"].set_index("id")
    assert demos.groupby("id").size().tolist() == [2] * LIMIT
    vectors = embed.embed(pool["problem"].tolist())
    for id_, part in demos.groupby("id"):
        level = int(test.at[id_, "sparsity_level"])
        part = part.sort_values("position")
        assert set(part["sparsity_level"]) == {level}
        assert set(part["band"]) == {curriculum.band(level, 5)}
        offsets = curriculum.PLAN[curriculum.band(level, 5)]
        assert part["target_sparsity_level"].tolist() == [level + o for o in offsets]
        q = embed.embed([test.at[id_, "problem"]])[0]
        sims = vectors @ q
        chosen = set(part["demo_id"])
        for d in part.itertuples():
            i = pool.index[pool["id"] == d.demo_id][0]
            assert d.demo_sparsity_level == pool.at[
                i, "sparsity_level"
            ] and d.similarity == pytest.approx(sims[i])
            same = [
                j for j in range(POOL) if pool.at[j, "sparsity_level"] == d.target_sparsity_level
            ]
            free = [j for j in same if pool.at[j, "id"] not in chosen or j == i]
            if free:  # the most similar free problem of the target level
                assert d.demo_sparsity_level == d.target_sparsity_level
                assert sims[i] == pytest.approx(max(sims[j] for j in free))
        row = gens.set_index("id").loc[id_]
        assert list(row["demo_ids"]) == part["demo_id"].tolist()
        for demo_id in part["demo_id"]:  # (problem, full solution) turns, in that order
            sol = registry.load(registry.get_spec("math_train")).rows[int(demo_id.split("-")[1])]
            assert sol["problem"] in row["prompt"] and sol["solution"] in row["prompt"]


def test_generations_and_summary(curriculum_run):
    _, _, gens, summary = _tables(curriculum_run)
    assert list(gens.columns) == GENERATIONS and len(gens) == LIMIT
    assert set(gens["strategy"]) == {"curriculum"}
    assert (gens["tokens"] <= 8).all() and set(gens["finish_reason"]) <= {"stop", "length"}
    for row in gens.itertuples():
        assert row.extracted == extract_boxed(row.output)
        assert row.correct == math_equal(row.extracted, row.answer)
    k, n = int(gens["correct"].sum()), len(gens)
    lo, hi = wilson_interval(k, n)
    assert summary["overall"] == {
        "n": n, "correct": k, "accuracy": k / n, "ci_lo": lo, "ci_hi": hi
    }  # fmt: skip
    for field, key in (
        ("by_level", "level"),
        ("by_subject", "subject"),
        ("by_sparsity_level", "sparsity_level"),
    ):
        expected = gens.groupby(key)["correct"].agg(["size", "sum"])
        got = {r[key]: (r["n"], r["correct"]) for r in summary[field]}
        assert got == {k: (int(v["size"]), int(v["sum"])) for k, v in expected.iterrows()}
    assert summary["rank_metric"] == "l0_outlier" and len(summary["level_edges"]) == 4
    m = read_manifest(curriculum_run)
    assert m["status"] == "done" and m["seed"] == 0 and m["engine"] == "hf"
    assert m["pool"]["data_source"] == "sample" and m["dataset"]["data_source"] == "sample"
    assert m["timings"]["rank"]["prompts"] == POOL + LIMIT
    for stem in ("accuracy_by_level", "accuracy_by_sparsity_level", "sparsity_by_level",
                 "signals_rank", "risk_coverage"):  # fmt: skip
        assert (curriculum_run / "figures" / f"{stem}.png").stat().st_size > 5_000


def test_signals_from_the_saved_generations(curriculum_run):
    ranking, _, gens, _ = _tables(curriculum_run)
    values = pd.read_parquet(curriculum_run / "tables" / "signal_values.parquet")
    assert values["id"].tolist() == gens["id"].tolist()
    shards = RunDir(curriculum_run, {}).read_in_order("generations", ["id"], gens["id"].tolist())
    assert values["generation_mean_logprob"].tolist() == pytest.approx(
        [np.mean(lp) for lp in shards["logprobs"]]
    )
    test = ranking[ranking.role == "test"].set_index("id")
    assert values["prompt_h-1_l0_outlier"].tolist() == test.loc[values["id"], "score"].tolist()
    table = pd.read_csv(curriculum_run / "tables" / "signals.csv").set_index("signal")
    assert table.loc["prompt_h-1_l0_outlier", "direction"] == "lower"  # fewer outliers: sparser
    n, k = len(gens), int(gens["correct"].sum())
    scored = table[table.n > 0]
    if k == 0:  # a random model rarely boxes the right answer: undefined, and said so
        assert scored["note"].str.startswith(f"all {n} answers wrong").all()
    else:
        assert np.isfinite(scored["roc_auc"]).all()


def test_other_strategies_and_compare_plot(cli, curriculum_run, tiny_llama, tmp_path):
    runs = {}
    for strategy in ("cot", "few-shot", "auto-shot"):
        runs[strategy] = tmp_path / strategy
        extra = ["--strategy", strategy, "--shots", "3"]
        result = cli(*_args(tiny_llama, runs[strategy], *extra))
        assert result.exit_code == 0, result.output
    _, demos, gens, _ = _tables(runs["cot"])
    assert demos.empty and all(len(d) == 0 for d in gens["demo_ids"])
    assert all(p.count("<|im_start|>assistant") == 1 for p in gens["prompt"])
    _, few, gens_few, _ = _tables(runs["few-shot"])
    assert few.groupby("id").size().tolist() == [3] * LIMIT
    assert few["similarity"].isna().all()
    pool_ids = _tables(runs["few-shot"])[0].query("role == 'pool'")["id"].tolist()
    for id_, part in few.groupby("id"):  # a fresh draw per problem, seeded by --seed and its id
        draw = random.Random(row_seed(0, id_)).sample(range(POOL), 3)
        assert part.sort_values("position")["demo_id"].tolist() == [pool_ids[i] for i in draw]
    _, auto, _, _ = _tables(runs["auto-shot"])
    for _, part in auto.groupby("id"):  # the most similar first, as upstream
        assert part.sort_values("position")["similarity"].is_monotonic_decreasing
    ranking, *_ = _tables(runs["auto-shot"])
    pool = ranking[ranking.role == "pool"]
    vectors = embed.embed(pool["problem"].tolist())
    test = ranking[ranking.role == "test"].set_index("id")
    for id_, part in auto.groupby("id"):
        sims = vectors @ embed.embed([test.at[id_, "problem"]])[0]
        assert part["demo_id"].tolist() == pool["id"].iloc[np.argsort(-sims)[:3]].tolist()
    # the same test problems, levels and ranking whatever the strategy
    pd.testing.assert_frame_equal(ranking, _tables(curriculum_run)[0])

    result = cli("plot", curriculum_run, *runs.values(), "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cmp" / "cot_compare.png").stat().st_size > 10_000
    prr = pd.read_csv(tmp_path / "cmp" / "signals_prr.csv")  # the four strategies side by side
    assert sorted(prr["run"].str.rsplit(" / ", n=1).str[1].unique()) == [
        "auto-shot", "cot", "curriculum", "few-shot"
    ]  # fmt: skip
    assert (tmp_path / "cmp" / "signals_prr.png").is_file()


def test_resume_regenerates_only_what_is_missing(cli, tiny_llama, tmp_path):
    run = tmp_path / "r"
    assert cli(*_args(tiny_llama, run, "--strategy", "auto-shot")).exit_code == 0
    before = pd.read_parquet(run / "tables" / "generations.parquet")
    for f in (run / "tables" / "shards" / "generations").glob("*.parquet"):
        f.unlink()  # as if it died during generation
    result = cli(*_args(tiny_llama, run, "--strategy", "auto-shot", "--resume"))
    assert result.exit_code == 0, result.output
    m = read_manifest(run)
    assert m["resumed"] == 1 and m["timings"]["rank#1"]["prompts"] == 0  # ranking kept
    assert m["timings"]["generate#1"]["problems"] == LIMIT
    pd.testing.assert_frame_equal(before, pd.read_parquet(run / "tables" / "generations.parquet"))
    result = cli(*_args(tiny_llama, run, "--strategy", "cot", "--resume"))
    assert result.exit_code == 2 and "different settings" in result.stderr


def test_pool_is_deduplicated_against_test_problems(cli, tiny_llama, tmp_path):
    test_rows = registry.load(registry.get_spec("math500")).rows
    pool_rows = registry.load(registry.get_spec("math_train")).rows
    # the same test problem re-typeset, and a repeated pool problem, must both go
    copy = {**pool_rows[0], "problem": "  " + test_rows[3]["problem"].replace(" ", "  ") + " "}
    path = tmp_path / "pool.jsonl"
    unknown = {**pool_rows[2], "level": "Level ?"}  # as a few problems in MATH's own files
    rows = [copy, *pool_rows[:2], unknown, pool_rows[3], pool_rows[1], *pool_rows[4:8]]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    run = tmp_path / "r"
    result = cli(
        *_args(tiny_llama, run, "--pool-file", path, "--n-levels", "3", "--pool-size", "7")
    )
    assert result.exit_code == 0, result.output
    ranking, *_ = _tables(run)
    pool = ranking[ranking.role == "pool"]
    assert pool["id"].tolist() == [f"math_train-{i}" for i in (1, 2, 3, 4, 6, 7, 8)]
    assert pool["level"].isna().tolist() == [False, False, True, False, False, False, False]
    assert read_manifest(run)["pool"]["data_source"] == "file"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-levels", "21"], "--n-levels 21 is larger than the pool (20 problems)"),
        (["--rank-metric", "sparsiness"], "unknown metric 'sparsiness'"),
        (["--strategy", "many-shot"], "unknown --strategy 'many-shot'; use one of cot,"),
        (["--strategy", "few-shot", "--curriculum"], "--curriculum contradicts --strategy"),
        (["--n-levels", "2"], "--n-levels must be at least 3"),
        (["--pool-size", "0"], "--pool-size must be at least 1"),
        (["--engine", "fast"], "unknown --engine 'fast'"),
        (["--pool-file", "/no/pool.jsonl"], "--pool-file /no/pool.jsonl does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, tiny_llama, tmp_path, args, message):
    result = cli(*_args(tiny_llama, tmp_path / "runs" / "x", *args))
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split()) and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_empty_pool_after_dedup_is_an_error(cli, tiny_llama, tmp_path):
    path = tmp_path / "pool.jsonl"
    test_rows = registry.load(registry.get_spec("math500")).rows
    path.write_text("\n".join(json.dumps(r) for r in test_rows))  # the test set itself
    result = cli(*_args(tiny_llama, tmp_path / "runs" / "x", "--pool-file", path))
    assert result.exit_code == 2
    assert "is empty after removing the test problems" in " ".join(result.stderr.split())
    assert not (tmp_path / "runs").exists()


def test_vllm_engine(cli, vllm_engine, tmp_path):
    """The embedded model on the session's vLLM engine: greedy, graded, the same tables."""
    run = tmp_path / "v"
    args = ["cot", "--run-dir", run, "--sample", "2", "--pool-size", "6", "--n-levels", "3"]
    result = cli(*args, "--max-tokens", "16", "--engine", "vllm", "--quiet")
    assert result.exit_code == 0, result.output
    _, _, gens, summary = _tables(run)
    assert list(gens.columns) == GENERATIONS and len(gens) == 2
    assert read_manifest(run)["engine"] == "vllm" and summary["overall"]["n"] == 2
    assert (gens["tokens"] > 0).all() and (gens["tokens"] <= 16).all()
