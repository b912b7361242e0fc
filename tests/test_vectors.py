"""The analyses of saved vectors (entrainment_cli/vectors.py) inside real studies: the linear
probe ceiling beside the best metric and length, and the shift detectors against the
reference condition, each checked against an independent computation."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from entrainment_cli.data import registry
from entrainment_cli.runs.hidden import read_hidden
from entrainment_cli.science import estimators

QUICK = ["--metrics", "l1,hoyer,gini", "--n-boot", "100", "--quiet", "--save-hidden"]


def test_rankmath_ceiling_beside_the_best_metric_and_length(cli, tiny_llama, tmp_path):
    out = tmp_path / "rm"
    result = cli("qa", "rankmath", "--model", tiny_llama, "--layers", "1,-1", "--run-dir", out,
                 *QUICK)  # fmt: skip
    assert result.exit_code == 0, result.output
    ceiling = pd.read_csv(out / "tables" / "ceiling.csv")
    assert len(ceiling) == 2 * 3 and set(ceiling["scorer"]) == {
        "linear probe", "best metric", "prompt length"
    }  # fmt: skip
    samples = pd.read_parquet(out / "tables" / "samples.parquet")
    last = samples[samples.layer == -1].reset_index(drop=True)
    rows = ceiling[ceiling.layer == -1].set_index("scorer")
    # the probe, recomputed from the saved vectors alone
    ids, x = read_hidden(out, "samples", -1, "last-prompt")
    order = pd.Index([str(i) for i in ids]).get_indexer(last["id"].astype(str))
    record, _ = estimators.linear_probe(x[order], last["level"], seed=0, n_boot=100)
    assert rows.loc["linear probe", "value"] == pytest.approx(record["value"])
    assert rows.loc["linear probe", "statistic"] == "spearman_rho"
    # the best metric is the one with the largest |rho| in correlations.csv
    corr = pd.read_csv(out / "tables" / "correlations.csv")
    corr = corr[(corr.layer == -1) & corr.metric.isin(["l1", "hoyer", "gini"])]
    best = corr.loc[corr["spearman_rho"].abs().idxmax()]
    assert rows.loc["best metric", "name"] == best["metric"]
    assert rows.loc["best metric", "value"] == pytest.approx(best["spearman_rho"])
    rho = sps.spearmanr(last["level"], last["n_prompt_tokens"]).statistic
    assert rows.loc["prompt length", "value"] == pytest.approx(rho)
    assert (out / "figures" / "ceiling.png").stat().st_size > 10_000


def test_robustness_shift_detectors_against_the_reference(cli, tiny_llama, tmp_path):
    out = tmp_path / "rob"
    result = cli("qa", "robustness", "--model", tiny_llama, "--limit", 3, "--layers", "-1",
                 "--categories", "biology,math", "--run-dir", out, "--metrics", "l1,hoyer,gini",
                 "--quiet", "--save-hidden")  # fmt: skip
    assert result.exit_code == 0, result.output
    shift = pd.read_csv(out / "tables" / "shift.csv")
    assert set(shift["score"]) == {"md", "rmd", "l1", "hoyer", "gini", "n_prompt_tokens"}
    assert set(shift["reference"]) == {"normal"} and set(shift["positive"]) == {"light", "heavy"}
    samples = pd.read_parquet(out / "tables" / "samples.parquet")
    pair = samples[samples.noise.isin(["normal", "heavy"])]
    row = shift[(shift.score == "n_prompt_tokens") & (shift.positive == "heavy")].iloc[0]
    expected = roc_auc_score(pair["noise"] == "heavy", pair["n_prompt_tokens"])
    assert row["auroc"] == pytest.approx(expected) and row["direction"].startswith("higher")
    md = shift[shift.score == "md"]
    assert md["auroc"].between(0, 1).all() and (md["n_reference"] == 6).all()
    ceiling = pd.read_csv(out / "tables" / "ceiling.csv")
    assert ceiling["label"].eq("noise_level").all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--reference", "x"], "--reference is a value of --condition or --group"),
        (["--group", "operation", "--reference", "add"], "--reference needs --save-hidden"),
        (["--group", "operation", "--reference", "nope", "--save-hidden"],
         "--reference 'nope' is no value of 'operation'"),
    ],
)  # fmt: skip
def test_probe_reference_is_checked_before_the_run(cli, tiny_llama, tmp_path, args, message):
    result = cli("probe", "--model", tiny_llama, "--run-dir", tmp_path / "p", *args)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "p").exists()


def test_probe_reference_shift_table(cli, tiny_llama, tmp_path):
    out = tmp_path / "p"
    spec = registry.get_spec("probe")
    values = pd.read_json(registry.sample_path(spec), lines=True)["operation"]
    reference = str(values.iloc[0])
    result = cli("probe", "--model", tiny_llama, "--group", "operation", "--reference",
                 reference, "--run-dir", out, *QUICK)  # fmt: skip
    assert result.exit_code == 0, result.output
    shift = pd.read_csv(out / "tables" / "shift.csv")
    assert set(shift["reference"]) == {reference}
    assert set(shift["positive"]) == set(map(str, values.unique())) - {reference}
    assert np.isfinite(shift.loc[shift.score == "rmd", "auroc"]).all()


def test_the_report_lists_the_ceiling_and_the_shift(cli, tiny_llama, tmp_path):
    from entrainment_cli.plots.report import load_run

    out = tmp_path / "c"
    result = cli("qa", "conflict", "--model", tiny_llama, "--limit", 6, "--run-dir", out,
                 "--metrics", "l1", "--quiet", "--save-hidden")  # fmt: skip
    assert result.exit_code == 0, result.output
    names = list(load_run(out).stats["statistic"])
    assert "AUROC md: conflict vs nonconflict [layer -1, last-prompt]" in names
    assert "AUROC rmd: control vs nonconflict [layer -1, last-prompt]" in names
    # the ceiling of each two-way comparison (issue 21.2: conflict's condition as the label)
    ceiling = pd.read_csv(out / "tables" / "ceiling.csv")
    assert set(ceiling["comparison"]) == {"conflict vs nonconflict", "conflict vs control"}
    assert set(ceiling["scorer"]) == {"linear probe", "best metric", "prompt length"}
    samples = pd.read_parquet(out / "tables" / "samples.parquet")
    for other in ("nonconflict", "control"):
        part = samples[samples.condition.isin([other, "conflict"])]
        row = ceiling[(ceiling.comparison == f"conflict vs {other}")
                      & (ceiling.scorer == "best metric")]  # fmt: skip
        want = roc_auc_score(part.condition == "conflict", part["l1"])
        assert row["value"].item() == pytest.approx(want) and row["n"].item() == len(part)
    assert (out / "figures" / "ceiling.png").is_file()
