"""`entrain report` and `--log-to`: the HTML page of real small runs, checked as HTML and in
headless Chromium, and what W&B (offline) and MLflow (local store) received, read back."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps
from typer.testing import CliRunner

from entrainment_cli.cli.app import app
from entrainment_cli.plots.report import load_run, png_bytes, signal_stats
from entrainment_cli.runs import tracking
from entrainment_cli.runs.rundir import read_manifest
from entrainment_cli.science.stats import wilson_interval

QUICK = ["--metrics", "l1,top10_energy", "--n-boot", "50", "--quiet"]
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)"')


def _invoke(*args) -> object:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def runs(tiny_llama, tiny_qwen, tmp_path_factory) -> dict[str, Path]:
    """Two rankmath runs (two models, to compare) and one deepmath run, each a real study."""
    base = tmp_path_factory.mktemp("report-runs")
    out = {"rankmath_llama": base / "rm-llama", "rankmath_qwen": base / "rm-qwen"}
    for path, model in zip(out.values(), (tiny_llama, tiny_qwen), strict=True):
        _invoke("qa", "rankmath", "--model", model, "--limit", 1, "--layers", "1,-1",
                "--run-dir", path, *QUICK)  # fmt: skip
    out["deepmath"] = base / "dm"
    _invoke("qa", "deepmath", "--model", tiny_llama, "--sample", 6, "--run-dir", out["deepmath"],
            *QUICK)  # fmt: skip
    return out


def _images(page: str) -> list[tuple[str, bytes]]:
    """(caption, PNG bytes) of every embedded figure, in page order."""
    return [(alt, base64.b64decode(data)) for data, alt in IMG.findall(page)]


def _no_external_resource(page: str) -> None:
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert refs and all(r.startswith(("data:image/png;base64,", "#")) for r in refs)
    assert "url(" not in page and "<script" not in page and "<link" not in page


def test_every_study_ends_with_its_own_report(runs):
    for path in runs.values():
        page = (path / "report.html").read_text()
        _no_external_resource(page)
        figures = sorted((path / "figures").glob("*.png"))
        assert figures and _images(page) == [(f.stem, png_bytes(f)) for f in figures]
        for table in (path / "tables").glob("*.*"):
            assert str(table.resolve()) in page
        m = read_manifest(path)
        assert m["dataset"]["data_source"] == "sample"
        assert "Bundled sample data." in page and f"{m['dataset']['rows']}-row sample" in page
        assert m["model"]["weights_sha256"] in page and m["status"] == "done"
        for stage in m["timings"]:
            assert f"<td>{stage}</td>" in page


def test_key_statistics_match_an_independent_computation(runs):
    path = runs["rankmath_llama"]
    samples = pd.read_parquet(path / "tables" / "samples.parquet")
    final = samples[(samples.layer == -1) & (samples.position == "last-prompt")]
    rho = sps.spearmanr(final["level"], final["l1"])
    head = load_run(path).stats.iloc[0]
    assert head["statistic"] == "Spearman rho(level, l1) [layer -1, last-prompt]"
    assert head["value"] == pytest.approx(rho.statistic)
    assert head["p"] == pytest.approx(rho.pvalue)
    assert head["n"] == len(final) == 5  # one problem per level
    assert head["ci_lo"] <= head["value"] <= head["ci_hi"]
    page = (path / "report.html").read_text()
    assert f'<td class="num">{head["value"]:.4g}</td>' in page

    dm = runs["deepmath"]
    samples = pd.read_parquet(dm / "tables" / "samples.parquet")
    final = samples[samples.layer == -1]
    head = load_run(dm).stats.iloc[0]
    assert head["value"] == pytest.approx(sps.spearmanr(final["difficulty"], final["l1"])[0])
    assert head["n"] == 6


def test_accuracy_rows_carry_a_wilson_interval():
    from entrainment_cli.plots.report import _accuracy

    row = _accuracy("accuracy", 7, 20)
    assert (row["value"], row["n"]) == (0.35, 20)
    assert (row["ci_lo"], row["ci_hi"]) == wilson_interval(7, 20)


def test_report_of_several_runs_compares_and_links(runs, tmp_path):
    out = tmp_path / "all.html"
    result = _invoke("report", *runs.values(), "--out", out)
    assert str(out) in result.output
    page = out.read_text()
    _no_external_resource(page)
    images = _images(page)
    figures = [f for path in runs.values() for f in (path / "figures").glob("*.png")]
    assert sorted(data for _, data in images if _ != "rankmath_compare") == sorted(
        png_bytes(f) for f in figures
    )
    (compare,) = [data for alt, data in images if alt == "rankmath_compare"]
    assert len(compare) > 10_000
    assert 'id="compare-qa-rankmath"' in page and "compare-qa-deepmath" not in page  # one run
    compare = page.split('id="compare-qa-rankmath"')[1].split("<h2")[0]
    for name in ("rankmath_llama", "rankmath_qwen"):
        head = load_run(runs[name]).stats.iloc[0]
        assert f"{head['value']:.4g}" in compare and runs[name].name in compare
    for anchor in re.findall(r'href="#([^"]+)"', page):
        assert f'id="{anchor}"' in page


def test_bad_inputs_are_named_and_the_rest_reported(runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(runs["deepmath"], broken)
    (broken / "tables" / "correlations.csv").unlink()
    notrun = tmp_path / "notrun"
    notrun.mkdir()
    out = tmp_path / "r.html"
    result = _invoke("report", runs["rankmath_llama"], broken, notrun, "--out", out)
    text = " ".join(result.output.split())
    assert f"{broken} lacks tables/correlations.csv" in text
    assert f"{notrun} is not a run directory (no manifest.json)" in text
    page = out.read_text()
    assert runs["rankmath_llama"].name in page and "Not reported:" in page
    result = CliRunner().invoke(app, ["report", str(notrun), str(broken), "--out", str(out)])
    assert result.exit_code == 2 and "no run could be reported" in result.output
    assert runs["rankmath_llama"].name in out.read_text()  # the earlier page is not lost


# -- in a browser -----------------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
]


class DevTools:
    """Just enough of the Chrome DevTools protocol: commands, and the events seen meanwhile."""

    def __init__(self, ws):
        self.ws = ws
        self.events: list[dict] = []
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]
            self.events.append(message)

    def wait_for(self, method: str) -> None:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads(self.ws.recv(timeout=60)))


@pytest.fixture
def browser(tmp_path):
    from websockets.sync.client import connect

    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            yield DevTools(ws)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_report_renders_in_chromium(runs, tmp_path, browser):
    out = tmp_path / "report.html"
    _invoke("report", *runs.values(), "--out", out)
    for domain in ("Runtime", "Log", "Page", "Network"):
        browser.call(f"{domain}.enable")
    browser.call("Page.navigate", url=out.resolve().as_uri())
    browser.wait_for("Page.loadEventFired")
    sizes = browser.call(
        "Runtime.evaluate",
        expression="JSON.stringify([...document.images].map(i => ({alt: i.alt, "
        "complete: i.complete, w: i.naturalWidth, h: i.naturalHeight, "
        "rw: i.getBoundingClientRect().width, rh: i.getBoundingClientRect().height})))",
        returnByValue=True,
    )
    images = json.loads(sizes["result"]["value"])
    assert len(images) == len(_images(out.read_text())) > 3
    for img in images:
        assert img["complete"] and min(img["w"], img["h"], img["rw"], img["rh"]) > 0, img
    errors = [
        e
        for e in browser.events
        if e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    assert errors == []
    requested = [
        e["params"]["request"]["url"]
        for e in browser.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert requested and all(url.startswith(("file:", "data:")) for url in requested)
    title = browser.call("Runtime.evaluate", expression="document.title", returnByValue=True)
    assert title["result"]["value"] == "entrain report: 3 run(s)"
    zoomed = browser.call(  # a click shows a figure full size, a second click puts it back
        "Runtime.evaluate",
        expression="(() => { const i = document.images[0]; i.click(); "
        "const big = i.getBoundingClientRect().width === window.innerWidth; i.click(); "
        "return [big, i.classList.contains('zoom')]; })()",
        returnByValue=True,
    )
    assert zoomed["result"]["value"] == [True, False]


def test_page_has_an_overview_a_folded_tail_and_light_figures(runs, tmp_path):
    """One overview row per run at the top, each run's key statistics headline first with the
    rest behind a fold, and figures embedded as palette PNGs: smaller, the same picture."""
    from PIL import Image

    out = tmp_path / "all.html"
    _invoke("report", *runs.values(), "--out", out)
    page = out.read_text()
    overview = page.split("<h2>Overview</h2>")[1].split("<h2")[0]
    for path in runs.values():
        head = load_run(path).stats.iloc[0]
        assert path.name in overview and f"{head['value']:.4g}" in overview
    assert "key statistics (every metric, the controls, the signals)</summary>" in page
    figure = sorted((runs["deepmath"] / "figures").glob("*.png"))[0]
    small = png_bytes(figure)
    assert len(small) < 0.6 * figure.stat().st_size
    import io

    a = np.asarray(Image.open(figure).convert("RGB"), dtype=float)
    b = np.asarray(Image.open(io.BytesIO(small)).convert("RGB"), dtype=float)
    assert a.shape == b.shape and np.abs(a - b).mean() < 2.0  # of 255


# -- trackers ---------------------------------------------------------------------------------


def test_metric_keys_and_numbers():
    assert tracking.metric_key("Spearman rho(level, l1) [layer -1, last-prompt]") == (
        "Spearman rho level l1 layer -1 last-prompt"
    )
    rows = [{"statistic": "acc", "value": 0.5, "ci_lo": 0.2, "ci_hi": None, "n": 4, "p": None}]
    assert tracking.metrics(rows) == {"acc": 0.5, "acc/ci_lo": 0.2, "acc/n": 4.0}


def test_nothing_is_imported_without_log_to(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["deepmath"], run)
    code = (
        "import sys; from pathlib import Path; from entrainment_cli.cli.common import print_done;"
        f"print_done(Path({str(run)!r}));"
        "assert not {'wandb', 'mlflow'} & set(sys.modules), 'a tracker was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_unknown_tracker_is_refused_before_the_work(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "qa",
            "deepmath",
            "--sample",
            "2",
            "--log-to",
            "neptune",
            "--run-dir",
            str(tmp_path / "x"),
        ],
    )
    assert result.exit_code == 2 and "unknown --log-to 'neptune'" in result.output
    assert not (tmp_path / "x").exists()


def _need(module: str) -> None:
    """The trackers are extras: skipped where absent, except in CI, which installs them."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is missing: CI installs the [{module}] extra")
        pytest.skip(f"{module} is not installed (pip install 'entrainment-cli[{module}]')")


def _stats(run: Path) -> dict[str, float]:
    return tracking.metrics(load_run(run).stats.to_dict(orient="records"))


def test_wandb_offline_receives_config_statistics_figures_tables(runs, tmp_path, monkeypatch):
    _need("wandb")
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default
    run = runs["rankmath_qwen"]
    result = _invoke("report", run, "--out", tmp_path / "r.html", "--log-to", "wandb")
    assert "W&B run" in result.output and "(offline)" in result.output
    (log,) = (tmp_path / "WANDB_DIR" / "wandb").glob("offline-run-*/run-*.wandb")
    dump = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", str(log), "--json"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    records = [json.loads(line) for line in dump.stdout.splitlines() if line.startswith("{")]
    kinds = {r["type"] for r in records}
    assert {"run", "summary", "artifact", "files"} <= kinds
    (started,) = [r["run"] for r in records if r["type"] == "run"]
    config = started["config"]["update"]
    m = read_manifest(run)
    assert config["model"] == m["model"] and config["dataset"] == m["dataset"]
    assert config["config"] == yaml.safe_load((run / "config.yaml").read_text())
    assert config["config"]["limit"] == 1 and config["command"] == "qa rankmath"
    summary = {}
    for r in records:
        if r["type"] == "summary":
            summary |= r["summary"].get("update", {})
    for key, value in _stats(run).items():
        assert summary[key] == pytest.approx(value)
    logged = {f["path"] for r in records if r["type"] == "files" for f in r["files"]["files"]}
    figures = sorted((run / "figures").glob("*.png"))
    assert sum(p.startswith("media/images/figures/") for p in logged) == len(figures)
    (artifact,) = [r["artifact"] for r in records if r["type"] == "artifact" and
                   r["artifact"]["type"] == "entrain-run"]  # fmt: skip
    names = {c["path"] for c in artifact["manifest"]["contents"]}
    tables = {f"tables/{p.name}" for p in (run / "tables").iterdir() if p.is_file()}
    assert names == tables | {"manifest.json"}


def test_a_study_logs_to_mlflow_local_store(tiny_llama, tmp_path, monkeypatch):
    """The study's own --log-to (the same finishing hook that writes RUN/report.html)."""
    _need("mlflow")
    import mlflow

    monkeypatch.chdir(tmp_path)  # MLflow's local store keeps artifacts in ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "report-test")
    run = tmp_path / "dm"
    result = _invoke("qa", "deepmath", "--model", tiny_llama, "--sample", 6, "--run-dir", run,
                     *QUICK, "--log-to", "mlflow")  # fmt: skip
    assert (run / "report.html").is_file()
    run_id = re.search(r"MLflow run (\w+)", result.output).group(1)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    got = client.get_run(run_id)
    m = read_manifest(run)
    assert got.data.params["model.weights_sha256"] == m["model"]["weights_sha256"]
    assert got.data.params["dataset.data_source"] == "sample"
    assert got.data.params["config.sample"] == "6" and got.data.tags["command"] == "qa deepmath"
    assert got.data.metrics == pytest.approx(_stats(run))
    arts = {a.path for d in ("figures", "tables") for a in client.list_artifacts(run_id, d)}
    arts |= {a.path for a in client.list_artifacts(run_id)}
    figures = {f"figures/{p.name}" for p in (run / "figures").glob("*.png")}
    tables = {f"tables/{p.name}" for p in (run / "tables").iterdir() if p.is_file()}
    assert figures | tables | {"manifest.json", "config.json"} <= arts


# -- extractors of the studies not run above, on tables written as those studies write them ---


def test_every_plotted_command_has_key_statistics():
    from entrainment_cli.plots.report import KEY_STATISTICS
    from entrainment_cli.studies import BY_NAME

    assert set(KEY_STATISTICS) == set(BY_NAME)


def test_robustness_headline_is_heavy_minus_normal(tmp_path):
    from entrainment_cli.plots.report import robustness_stats

    rows = []
    for a, b, diff in (("normal", "light", -1.0), ("normal", "heavy", -2.0), ("light", "heavy", 5)):
        for layer in (0, -1):
            rows.append({"layer": layer, "position": "last-prompt", "area": "All", "metric": "l1",
                         "noise_a": a, "noise_b": b, "n": 6, "mean_diff": diff + layer,
                         "wilcoxon_p": 0.03})  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "paired_tests.csv", index=False)
    pd.DataFrame(
        {
            "area": ["All", "All", "Math"],
            "noise": ["normal", "heavy", "heavy"],
            "n": [6, 6, 1],
            "correct": [3, 0, 0],
        }  # fmt: skip
    ).to_csv(tmp_path / "accuracy.csv", index=False)
    stats = robustness_stats(tmp_path)
    assert [(r["statistic"], r["value"]) for r in stats[:2]] == [
        ("mean diff l1: heavy - normal [layer -1, last-prompt, all areas]", -3.0),
        ("mean diff l1: light - normal [layer -1, last-prompt, all areas]", -2.0),
    ]
    assert stats[2] == {"statistic": "accuracy normal (all areas)", "value": 0.5,
                        "ci_lo": wilson_interval(3, 6)[0], "ci_hi": wilson_interval(3, 6)[1],
                        "n": 6, "p": None, "note": ""}  # fmt: skip
    assert len(stats) == 4


def test_pretrain_and_cot_headlines(tmp_path):
    from entrainment_cli.plots.report import cot_stats, pretrain_stats

    pd.DataFrame(
        {
            "step": 100,
            "split": ["id", "ood_medium", "ood_hard"],
            "layer": -1,
            "n": 200,
            "accuracy": [0.9, 0.5, 0.25],
        }  # fmt: skip
    ).to_csv(tmp_path / "final.csv", index=False)
    head = pretrain_stats(tmp_path)[0]
    assert head["statistic"] == "accuracy ood_hard (final step) [layer -1]"
    assert (head["value"], head["n"]) == (0.25, 200)
    assert (head["ci_lo"], head["ci_hi"]) == wilson_interval(50, 200)
    record = {"n": 8, "correct": 2, "accuracy": 0.25, "ci_lo": 0.1, "ci_hi": 0.6}
    summary = {"strategy": "curriculum", "overall": record,
               "by_sparsity_level": [{"sparsity_level": 1, **record}],
               "by_level": [{"level": 3, **record}]}  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert [r["statistic"] for r in cot_stats(tmp_path)] == [
        "accuracy (curriculum)", "accuracy sparsity_level 1", "accuracy level 3"
    ]  # fmt: skip


def test_a_tracker_that_refuses_is_one_line_and_the_report_stays(runs, tmp_path, monkeypatch):
    _need("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://store")
    out = tmp_path / "r.html"
    result = CliRunner().invoke(
        app, ["report", str(runs["deepmath"]), "--out", str(out), "--log-to", "mlflow"]
    )
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and f"mlflow did not take {runs['deepmath']}" in text
    assert f"entrain report {runs['deepmath']} --log-to mlflow" in text
    assert runs["deepmath"].name in out.read_text()


def test_tables_of_another_layout_are_one_line(runs, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(runs["deepmath"], old)
    corr = pd.read_csv(old / "tables" / "correlations.csv")
    corr.drop(columns="spearman_rho").to_csv(old / "tables" / "correlations.csv", index=False)
    result = CliRunner().invoke(app, ["report", str(old), "--out", str(tmp_path / "r.html")])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and f"{old}: its tables lack" in text and "spearman_rho" in text


def test_graded_runs_report_their_best_signals(tmp_path):
    """signals.csv's best PRRs (NaN ones left out) join a graded run's key statistics."""

    assert signal_stats(tmp_path) == []  # not a graded run
    table = pd.DataFrame(
        {
            "signal": ["stops", "entropy", "constant"],
            "kind": ["token", "baseline", "token"],
            "direction": ["lower", "higher", "higher"],
            "n": [16, 16, 0],
            "prr": [0.41, 0.2, np.nan],
            "prr_lo": [0.1, -0.3, np.nan],
            "prr_hi": [0.7, 0.6, np.nan],
        }
    )
    table.to_csv(tmp_path / "signals.csv", index=False)
    rows = signal_stats(tmp_path)
    assert [r["statistic"] for r in rows] == [
        "PRR stops (token, lower = error)",
        "PRR entropy (baseline, higher = error)",
    ]
    assert [(r["value"], r["ci_lo"], r["ci_hi"], r["n"]) for r in rows] == [
        (0.41, 0.1, 0.7, 16),
        (0.2, -0.3, 0.6, 16),
    ]


def test_parent_folders_of_runs_and_runs_of_one_name(runs, tmp_path):
    """`entrain report runs/` and `entrain plot runs/ --out P` take a folder of runs; two runs
    of one name (two shard merges both called `merged`) get a folder each, none overwritten."""
    parent = tmp_path / "runs"
    a, b = parent / "one" / "merged", parent / "two" / "merged"
    shutil.copytree(runs["rankmath_llama"], a)
    shutil.copytree(runs["rankmath_qwen"], b)
    out = tmp_path / "page.html"
    _invoke("report", parent, "--out", out)
    page = out.read_text()
    assert page.count("<h2 id=") >= 2 and "entrain report: 2 run(s)" in page
    figures = tmp_path / "figs"
    _invoke("plot", parent, "--out", figures)
    for rd, folder in ((a, "one-merged"), (b, "two-merged")):
        for f in (rd / "figures").glob("*.png"):
            assert (figures / folder / f.name).read_bytes() == f.read_bytes()


def test_damaged_runs_are_one_line_and_the_others_reported(runs, tmp_path):
    """A damaged table, a manifest of valid JSON with fields of the wrong type, a sub-folder or
    a symlink loop under figures/: one line each, exit 2 only when nothing could be reported;
    `report --out DIR` writes DIR/report.html."""
    good, bad_csv, bad_types = (tmp_path / n for n in ("good", "csv", "types"))
    for path in (good, bad_csv, bad_types):
        shutil.copytree(runs["deepmath"], path)
    (good / "figures" / "sub").mkdir()
    (good / "figures" / "loop").symlink_to(good / "figures" / "loop")
    with (bad_csv / "tables" / "correlations.csv").open("a") as f:
        f.write('1,2,3\n"')
    manifest = json.loads((bad_types / "manifest.json").read_text())
    manifest |= {"identity": None, "dataset": None}
    (bad_types / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["report", str(good), str(bad_csv), str(bad_types), "--out",
                                      str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0 and (tmp_path / "report.html").is_file()
    assert "a table is damaged" in result.output and "'identity' is NoneType" in result.output
    for args in (["report", str(bad_types)], ["plot", str(bad_types)], ["plot", str(bad_csv)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and "Traceback" not in result.output, args
    assert CliRunner().invoke(app, ["plot", str(good)]).exit_code == 0
