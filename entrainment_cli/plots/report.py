"""`entrain report`: one self-contained HTML page of one or many runs, from their saved files.

The page reads only what a run directory holds (manifest.json, config.yaml, tables/, figures/):
figures are embedded as base64 PNG, styles are inline, and nothing points outside the file, so
it opens from disk and can be mailed. Each command's key statistics (with N, CI and p) come
from one small extractor in ``KEY_STATISTICS``; the first row it returns is the run's headline,
which the comparison section tabulates across runs and the trackers receive.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UserError
from ..runs.rundir import atomic_write_text, read_manifest, saved_files, slug
from ..science import noise
from ..science.stats import wilson_interval
from ..studies import BY_NAME
from . import readable_tables

REPORT = "report.html"
HEADLINE_METRIC = "l1"  # the papers' headline sparsity metric; the first one when absent
MAX_ROWS = 200  # rows of a CSV shown inline; the file's path is always listed


# -- key statistics: one extractor per command --------------------------------------------------


def stat(name: str, value, lo=None, hi=None, n=None, p=None, note="") -> dict[str, Any]:
    """One row of a key-statistics table; ``name`` is ASCII so trackers can use it as a key;
    ``note`` says why a cell is blank or what to make of the value."""
    note = "" if note is None or (isinstance(note, float) and math.isnan(note)) else str(note)
    return {"statistic": name, "value": value, "ci_lo": lo, "ci_hi": hi, "n": n, "p": p,
            "note": note}  # fmt: skip


def _final_slice(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows of the final layer (-1, after the last norm, else the deepest one) and of the
    first position: the papers' place; also a label saying which."""
    where = []
    if "layer" in df and len(df):
        layers = set(df["layer"])
        layer = -1 if -1 in layers else max(layers)
        df = df[df["layer"] == layer]
        where.append(f"layer {layer}")
    if "position" in df and len(df):
        position = "last-prompt" if "last-prompt" in set(df["position"]) else df["position"].iloc[0]
        df = df[df["position"] == position]
        where.append(str(position))
    return df, ", ".join(where)


def _headline_first(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the headline metric first, the others in their saved order."""
    first = df["metric"] == HEADLINE_METRIC
    return pd.concat([df[first], df[~first]])


def _where(row: dict) -> str:
    parts = [f"layer {int(row['layer'])}"] if pd.notna(row.get("layer")) else []
    return ", ".join(parts + ([str(row["position"])] if pd.notna(row.get("position")) else []))


def _strongest(df: pd.DataFrame, value: str, name: str, lo: str, hi: str, p: str) -> list[dict]:
    """The metric, layer and position with the largest |``value``| over every probed layer
    (the final layer's rows are the headline; the strongest may be elsewhere): ``name`` is
    formatted with the row's columns."""
    from ..science.sparsity import SPARSER

    rows = df[df["metric"].isin(list(SPARSER)) & df[value].notna()]
    if "layer" not in df or rows["layer"].nunique() < 2:
        return []
    strength = (rows[value] - 0.5).abs() if value == "auroc" else rows[value].abs()
    r = rows.loc[strength.idxmax()].to_dict()
    return [stat(f"strongest over layers: {name.format(**r)} [{_where(r)}]", r[value], r[lo],
                 r[hi], r["n"], r[p])]  # fmt: skip


def _correlations(tables: Path, x: str) -> list[dict]:
    every = pd.read_csv(tables / "correlations.csv")
    df, where = _final_slice(every)
    strongest = _strongest(every, "spearman_rho", f"Spearman rho({x}, {{metric}})",
                           "spearman_lo", "spearman_hi", "spearman_p")  # fmt: skip
    rows = [
        stat(
            f"Spearman rho({x}, {r.metric}) [{where}]",
            r.spearman_rho,
            r.spearman_lo,
            r.spearman_hi,
            r.n,
            r.spearman_p,
        )
        for r in _headline_first(df).itertuples()
    ]
    return rows[:1] + strongest + rows[1:]  # the headline stays first


def _paired(df: pd.DataFrame, a: str, b: str, where_extra: str = "") -> list[dict]:
    """Paired tests (mean difference b - a, condition minus reference, Wilcoxon p) at the
    final layer; ``a`` and ``b`` name the columns holding the reference and the condition."""
    df, where = _final_slice(df)
    return [
        stat(
            f"mean diff {r.metric}: {getattr(r, b)} - {getattr(r, a)} [{where}{where_extra}]",
            r.mean_diff,
            n=r.n,
            p=r.wilcoxon_p,
        )
        for r in _headline_first(df).itertuples()
    ]


def _accuracy(name: str, k: int, n: int) -> dict:
    lo, hi = wilson_interval(k, n)
    return stat(name, k / n if n else None, lo, hi, n)


def rankmath_stats(tables: Path) -> list[dict]:
    return _correlations(tables, "level")


def deepmath_stats(tables: Path) -> list[dict]:
    return _correlations(tables, "difficulty")


def accuracy_stats(tables: Path) -> list[dict]:
    assoc, where = _final_slice(pd.read_csv(tables / "association.csv"))
    by_level = pd.read_csv(tables / "accuracy_by_level.csv")
    rows = [
        stat(
            f"point-biserial r(correct, {r.metric}) [{where}]",
            r.point_biserial_r,
            r.point_biserial_lo,
            r.point_biserial_hi,
            r.n,
            r.point_biserial_p,
        )
        for r in _headline_first(assoc).itertuples()
    ]
    rows.append(_accuracy("accuracy (all levels)", by_level["correct"].sum(), by_level["n"].sum()))
    rows += [_accuracy(f"accuracy level {r.level}", r.correct, r.n) for r in by_level.itertuples()]
    rows += [
        stat(f"AUROC({r.metric} -> correct) [{where}]", r.auroc, n=r.n, p=r.mannwhitney_p)
        for r in _headline_first(assoc).itertuples()
    ]
    return rows


def robustness_stats(tables: Path) -> list[dict]:
    levels = list(noise.LEVELS)  # normal, light, heavy
    tests = pd.read_csv(tables / "paired_tests.csv")
    tests = tests[(tests["area"] == "All") & (tests["noise_a"] == levels[0])]
    tests = tests.sort_values(  # heaviest noise first
        "noise_b", key=lambda s: s.map(levels.index), ascending=False, kind="stable"
    )
    acc = pd.read_csv(tables / "accuracy.csv")
    acc = acc[acc["area"] == "All"]
    rows = _paired(tests, "noise_a", "noise_b", ", all areas")
    return rows + [
        _accuracy(f"accuracy {r.noise} (all areas)", r.correct, r.n) for r in acc.itertuples()
    ]


def longreason_stats(tables: Path) -> list[dict]:
    acc = pd.read_csv(tables / "accuracy.csv")
    splits = list(acc["split"])  # shortest context first
    paired = pd.read_csv(tables / "paired.csv").sort_values(  # the longest against it first
        "b", key=lambda s: s.map(splits.index), ascending=False, kind="stable"
    )
    rows = _paired(paired, "a", "b")
    return rows + [
        stat(f"accuracy {r.split}", r.accuracy, r.ci_lo, r.ci_hi, r.n_answered)
        for r in acc.itertuples()
    ]


def conflict_stats(tables: Path) -> list[dict]:
    return _paired(pd.read_csv(tables / "paired.csv"), "a", "b")


def cot_stats(tables: Path) -> list[dict]:
    summary = json.loads((tables / "summary.json").read_text())

    def row(name: str, r: dict) -> dict:
        return stat(name, r["accuracy"], r["ci_lo"], r["ci_hi"], r["n"])

    rows = [row(f"accuracy ({summary['strategy']})", summary["overall"])]
    for label in ("sparsity_level", "level"):  # the level of the curriculum, then MATH's
        rows += [row(f"accuracy {label} {r[label]}", r) for r in summary[f"by_{label}"]]
    return rows


def correlate_stats(tables: Path) -> list[dict]:
    r = pd.read_csv(tables / "stats.csv").iloc[0]
    n = r["n"]  # tokens, pooled over the prompts named in the label (the bootstrap's unit)
    over = f"tokens of {r['n_prompts']} prompts"
    rows = [
        stat(
            f"Spearman rho({r['x']}, {r['y']}) [{over}]",
            r["spearman_rho"],
            r["spearman_lo"],
            r["spearman_hi"],
            n,
            r["spearman_p"],
            r.get("note"),
        ),
        stat(
            f"Pearson r({r['x']}, {r['y']}) [{over}]",
            r["pearson_r"],
            r["pearson_lo"],
            r["pearson_hi"],
            n,
            r["pearson_p"],
        ),
    ]
    if "fit_r2" in r:
        rows.append(stat("unimodal fit R^2 (bin medians)", r["fit_r2"]))
    graded = tables / "summary.json"
    if graded.is_file():
        s = json.loads(graded.read_text())
        rows.append(_accuracy("accuracy (graded)", s["n_correct"], s["n_prompts"]))
        clf = json.loads((tables / "classifier.json").read_text())
        for name, m in clf.get("models", {}).items():
            rows.append(stat(f"AUROC {name} (cross-validated)", m["auroc_mean"], n=clf["n"]))
    return rows


def pretrain_stats(tables: Path) -> list[dict]:
    """Each split's final accuracy; for a ``--seeds`` run, its across-seed mean and t CI."""
    if not (tables / "final.csv").is_file():
        seeds, where = _final_slice(pd.read_csv(tables / "seeds.csv"))
        return [
            stat(
                f"accuracy {r.split} (mean of {r.seeds} seeds) [{where}]",
                r.accuracy,
                r.accuracy - r.accuracy_ci,
                r.accuracy + r.accuracy_ci,
                r.n,
            )
            for r in seeds.iloc[::-1].itertuples()
        ]
    final, where = _final_slice(pd.read_csv(tables / "final.csv"))
    return [
        _accuracy(f"accuracy {r.split} (final step) [{where}]", round(r.accuracy * r.n), r.n)
        for r in final.iloc[::-1].itertuples()  # the hardest split first
    ]


def probe_stats(tables: Path) -> list[dict]:
    """The effect size of each question the run asked, at the final layer; a run with no
    question reports each metric's mean."""
    rows = []
    questions = {  # table -> the effect's name, its column, CI columns, p column
        "label_correlations.csv": (
            "Spearman rho({label}, {metric})",
            "spearman_rho",
            "spearman_lo",
            "spearman_hi",
            "spearman_p",
        ),
        "label_auroc.csv": (
            "AUROC({metric} -> {label}={positive})",
            "auroc",
            "auroc_lo",
            "auroc_hi",
            "p",
        ),
        "group_kruskal.csv": (
            "epsilon^2({metric} across {group})",
            "epsilon_sq",
            "epsilon_sq_lo",
            "epsilon_sq_hi",
            "p",
        ),
        "paired.csv": (
            "rank-biserial r({metric}: {b} - {a})",
            "rank_biserial",
            "rank_biserial_lo",
            "rank_biserial_hi",
            "wilcoxon_p",
        ),
    }
    strongest = []
    for name, (label, value, lo, hi, p) in questions.items():
        if (tables / name).is_file():
            every = pd.read_csv(tables / name)
            strongest += _strongest(every, value, label, lo, hi, p)
            df, where = _final_slice(every)
            for r in _headline_first(df).to_dict("records"):
                title = f"{label.format(**r)} [{where}]"
                rows.append(stat(title, r[value], r[lo], r[hi], r["n"], r[p]))
    rows = rows[:1] + strongest + rows[1:]  # the headline stays first
    if not rows:
        df, where = _final_slice(pd.read_csv(tables / "summary.csv"))
        rows = [
            stat(f"mean {r.metric} [{where}]", r.mean, n=r.n)
            for r in _headline_first(df).itertuples()
        ]
    return rows


def control_stats(tables: Path) -> list[dict]:
    """The controls of a run (tables/baselines.csv and controls.csv): each model-free baseline
    alone, then each metric's raw Spearman rho beside its partial rho given prompt length at
    the final layer, a metric whose effect length explains flagged in its note."""
    rows = []
    if (tables / "baselines.csv").is_file():
        for r in pd.read_csv(tables / "baselines.csv").to_dict("records"):
            name = f"baseline {r['baseline']}: {r.get('statistic', '')} for {r['label']}"
            rows.append(stat(name, r.get("value"), r.get("lo"), r.get("hi"), r.get("n"),
                             r.get("p"), r.get("note")))  # fmt: skip
    if (tables / "controls.csv").is_file():
        table = pd.read_csv(tables / "controls.csv")
        table = table[table["kind"] == "metric"]
        scopes = table.groupby(["a", "b"], sort=False) if "a" in table else [((), table)]
        for key, part in scopes:
            df, where = _final_slice(part)
            if key:
                where = f"{key[1]} vs {key[0]}, {where}"
            for r in _headline_first(df).to_dict("records"):
                label, given = r["label"], r["controlled_for"]
                rows.append(stat(f"Spearman rho({label}, {r['metric']}) raw [{where}]",
                                 r["spearman_rho"], r["spearman_lo"], r["spearman_hi"],
                                 r["n"], r["spearman_p"]))  # fmt: skip
                note = "; ".join(str(v) for v in (r["verdict"], r["note"]) if pd.notna(v) and v)
                rows.append(stat(f"partial rho({label}, {r['metric']} | {given}) [{where}]",
                                 r["partial_rho"], r["partial_lo"], r["partial_hi"], r["n"],
                                 r["partial_p"], note))  # fmt: skip
    return rows


def vector_stats(tables: Path) -> list[dict]:
    """What the saved vectors say at the final layer: the linear probe (the ceiling) beside
    the best metric and length (tables/ceiling.csv), and the Mahalanobis distances' AUROC for
    each shifted condition (tables/shift.csv)."""
    rows = []
    if (tables / "ceiling.csv").is_file():
        df, where = _final_slice(pd.read_csv(tables / "ceiling.csv"))
        for r in df.to_dict("records"):
            name = f"{r['scorer']} ({r['name']}): {r['statistic']} for {r['label']} [{where}]"
            rows.append(stat(name, r["value"], r["lo"], r["hi"], r["n"], r["p"], r.get("note")))
    if (tables / "shift.csv").is_file():
        df, where = _final_slice(pd.read_csv(tables / "shift.csv"))
        for r in df[df["score"].isin(["md", "rmd"])].to_dict("records"):
            name = f"AUROC {r['score']}: {r['positive']} vs {r['reference']} [{where}]"
            n = r["n_reference"] + r["n_shifted"]
            rows.append(stat(name, r["auroc"], r["auroc_lo"], r["auroc_hi"], n, r["p"],
                             r["direction"]))  # fmt: skip
    return rows


def signal_stats(tables: Path, top: int = 5) -> list[dict]:
    """A graded run's best signals against correctness (tables/signals.csv, best PRR first):
    PRR with its CI, beside the study's own statistics; none for other runs."""
    path = tables / "signals.csv"
    if not path.is_file():
        return []
    ranked = pd.read_csv(path).dropna(subset=["prr"]).head(top)
    return [
        stat(f"PRR {r.signal} ({r.kind}, {r.direction} = error)", r.prr, r.prr_lo, r.prr_hi, r.n)
        for r in ranked.itertuples()
    ]


# command -> (tables its extractor reads, "a|b" meaning either; the extractor)
KEY_STATISTICS: dict[str, tuple[tuple[str, ...], Callable[[Path], list[dict]]]] = {
    "qa rankmath": (("correlations.csv",), rankmath_stats),
    "qa deepmath": (("correlations.csv",), deepmath_stats),
    "qa accuracy": (("association.csv", "accuracy_by_level.csv"), accuracy_stats),
    "qa robustness": (("paired_tests.csv", "accuracy.csv"), robustness_stats),
    "qa longreason": (("paired.csv", "accuracy.csv"), longreason_stats),
    "qa conflict": (("paired.csv",), conflict_stats),
    "cot": (("summary.json",), cot_stats),
    "correlate": (("stats.csv",), correlate_stats),
    "pretrain": (("final.csv|seeds.csv",), pretrain_stats),
    "probe": (("summary.csv",), probe_stats),
}


# -- loading runs ---------------------------------------------------------------------------


@dataclass
class Run:
    """What the page shows of one run, all read from its directory."""

    path: Path
    manifest: dict[str, Any]
    stats: pd.DataFrame
    config: str | None  # config.yaml, where the run saved one
    figures: list[Path]
    tables: list[Path]

    @property
    def command(self) -> str:
        return self.manifest["command"]

    @property
    def anchor(self) -> str:
        """A page-unique id: runs of one name in different folders stay apart."""
        where = hashlib.sha1(str(self.path.resolve()).encode()).hexdigest()[:8]
        return "run-" + re.sub(r"[^A-Za-z0-9_-]+", "-", f"{self.path.name}-{where}")

    @property
    def label(self) -> str:
        model = self.manifest.get("model", {}).get("id", "?")
        return f"{model} / {self.manifest.get('dataset', {}).get('id', '?')} ({self.path.name})"

    def headline(self) -> dict[str, Any]:
        if self.stats.empty:
            return stat("(no statistic: the tables are empty)", None)
        return self.stats.iloc[0].to_dict()


def load_run(path: Path) -> Run:
    """Read one run directory; a UserError names what is missing."""
    if not path.is_dir():
        what = "a file" if path.exists() else "no such directory"
        raise UserError(f"{path} is not a run directory ({what})")
    manifest = read_manifest(path)
    command = manifest.get("command")
    if command not in KEY_STATISTICS:
        raise UserError(f"{path}: no report is defined for '{command}' runs")
    tables = path / "tables"
    needed, extract = KEY_STATISTICS[command]
    missing = [  # "a|b": either table
        " or ".join(f"tables/{t}" for t in ts.split("|"))
        for ts in needed
        if not any((tables / t).is_file() for t in ts.split("|"))
    ]
    if missing:
        raise UserError(
            f"{path} lacks {', '.join(missing)} (status: {manifest.get('status', '?')}); "
            "finish the run with --resume, or rerun it"
        )
    try:
        rows = extract(tables) + control_stats(tables) + vector_stats(tables) + signal_stats(tables)
    except pd.errors.EmptyDataError:  # a study that had nothing to test writes an empty CSV
        rows = []
    except (KeyError, AttributeError) as e:  # a column or key this version does not write
        raise UserError(
            f"{path}: its tables lack {e} (written by another version of entrain?); rerun it"
        ) from None
    except (ValueError, UnicodeDecodeError) as e:  # pandas' ParserError is a ValueError
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: a table is damaged ({reason}); rerun its analysis") from None
    config = path / "config.yaml"
    figures, files = saved_files(path)
    return Run(
        path=path,
        manifest=manifest,
        stats=pd.DataFrame.from_records(rows, columns=list(stat("", None))),
        config=config.read_text() if config.is_file() else None,
        figures=figures,
        tables=files,
    )


# -- HTML -----------------------------------------------------------------------------------

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;
color:#1d1d1f}
h1{font-size:1.6em}h2{border-bottom:2px solid #ccd;padding-bottom:.2em;margin-top:2em}
h3{margin-bottom:.3em}table{border-collapse:collapse;margin:.4em 0 1em;font-size:.9em}
td,th{border:1px solid #dde;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff4d6;border-left:5px solid #e0a800;padding:.6em 1em;margin:.6em 0}
.bad{background:#fde2e2;border-left:5px solid #c62828;padding:.6em 1em;margin:.6em 0}
.ok{color:#1b7f3b;font-weight:600}.failed{color:#c62828;font-weight:600}
figure{display:inline-block;margin:.5em;vertical-align:top;max-width:48%}
figure.wide{max-width:100%}figure img{max-width:100%;height:auto;border:1px solid #dde;
cursor:zoom-in}figure img.zoom{position:fixed;inset:0;width:100vw;height:100vh;max-width:none;
object-fit:contain;background:#fff;z-index:9;cursor:zoom-out;border:0}
figcaption{font-size:.85em;color:#555}code,pre{font-size:.85em;background:#f6f6f9}
pre{padding:.5em;overflow-x:auto}.grid{display:flex;flex-wrap:wrap;gap:2em}
details{margin:.2em 0}summary{cursor:pointer}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """Numbers to 4 significant digits; missing values as an empty cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(
    rows: list[dict] | pd.DataFrame, columns: list[str] | None = None, raw: tuple[str, ...] = ()
) -> str:
    """An HTML table; cells of the ``raw`` columns are HTML already (links)."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame.from_records(rows)
    columns = columns or [str(c) for c in frame.columns]
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for record in frame.to_dict(orient="records"):
        cells = []
        for c in columns:
            v = record.get(c)
            cls = ' class="num"' if isinstance(v, int | float) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{v if c in raw else esc(fmt(v))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def pairs(mapping: dict[str, Any]) -> str:
    """A two-column table of a dict; nested values as compact JSON."""
    rows = [
        {"field": k, "value": json.dumps(v) if isinstance(v, dict | list) else v}
        for k, v in mapping.items()
    ]
    return table(rows, ["field", "value"])


PNG_COLORS = 128  # a figure's palette in the page: a third of the bytes, the same picture


def png_bytes(path: Path) -> bytes:
    """The figure as an optimized palette PNG (figures are flat colours and text, so 128
    colours lose nothing visible); the saved file is left as it is."""
    import io

    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=PNG_COLORS, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    return out.getvalue()


def image(path: Path, caption: str, wide: bool = False) -> str:
    """A figure embedded in the page; a click shows it full size (and another click back)."""
    data = base64.b64encode(png_bytes(path)).decode("ascii")
    css = ' class="wide"' if wide else ""
    return (
        f'<figure{css}><img src="data:image/png;base64,{data}" alt="{esc(caption)}" '
        f'onclick="this.classList.toggle(\'zoom\')" title="click: full size">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def key_statistics(stats: pd.DataFrame, shown: int = 6) -> str:
    """A run's key statistics: the headline and the next few, the rest behind a fold."""
    if len(stats) <= shown:
        return stats_table(stats)
    rest = stats.iloc[shown:]
    return (
        f"{stats_table(stats.iloc[:shown])}<details><summary>all {len(stats)} key statistics "
        f"(every metric, the controls, the signals)</summary>{stats_table(rest)}</details>"
    )


def stats_table(stats: pd.DataFrame, lead: tuple[str, ...] = ()) -> str:
    """Key statistics with their CI, N and p; ``lead`` columns (HTML) come first."""
    rows = [
        {
            **{c: r[c] for c in lead},
            "statistic": r["statistic"],
            "value": r["value"],
            "95% CI": ""
            if r["ci_lo"] is None or pd.isna(r["ci_lo"])
            else f"[{fmt(r['ci_lo'])}, {fmt(r['ci_hi'])}]",
            "N": r["n"],
            "p": r["p"],
            "note": r.get("note", ""),
        }
        for r in stats.to_dict(orient="records")
    ]
    return table(rows, [*lead, "statistic", "value", "95% CI", "N", "p", "note"], raw=lead)


def table_file(path: Path) -> str:
    """A saved table: its path, and its content (small CSV or JSON) behind a fold."""
    size = path.stat().st_size
    line = f"<code>{esc(path.resolve())}</code> ({size:,} bytes)"
    if path.suffix == ".csv":
        try:
            df = pd.read_csv(path)
        except pd.errors.EmptyDataError:  # a table with no rows and no columns
            return f"<div>{line}: empty</div>"
        except (ValueError, UnicodeDecodeError) as e:  # cut short or garbled: named, not shown
            return f"<div>{line}: unreadable ({esc(str(e).splitlines()[0])})</div>"
        shown = "" if len(df) <= MAX_ROWS else f" (first {MAX_ROWS} of {len(df)} rows)"
        body = table(df.head(MAX_ROWS))
        return f"<details><summary>{line}{shown}</summary>{body}</details>"
    if path.suffix == ".json":
        return f"<details><summary>{line}</summary><pre>{esc(path.read_text())}</pre></details>"
    return f"<div>{line}</div>"


def run_section(run: Run) -> str:
    m = run.manifest
    data = m.get("dataset", {})
    status = m.get("status", "?")
    parts = [f'<h2 id="{run.anchor}">{esc(run.command)}: {esc(run.label)}</h2>']
    parts.append(
        f"<p>Run directory <code>{esc(run.path.resolve())}</code>; status "
        f'<span class="{"ok" if status == "done" else "failed"}">{esc(status)}</span>; '
        f"{esc(m.get('started', '?'))} to {esc(m.get('ended', '?'))}; "
        f"device {esc(m.get('device', '?'))}; seed {esc(m.get('seed', '?'))}.</p>"
    )
    if status != "done":
        parts.append(
            f'<div class="bad">This run is <b>{esc(status)}</b>'
            f"{': ' + esc(m['error']) if m.get('error') else ''}; its tables may be partial.</div>"
        )
    if data.get("data_source") == "sample":
        parts.append(
            f'<div class="warn"><b>Bundled sample data.</b> The real dataset '
            f"({esc(data.get('hub_id') or data.get('id'))}) was not available, so the "
            f"{esc(data.get('rows', '?'))}-row sample shipped with entrain stood in: these "
            "numbers check the pipeline, they are not a result.</div>"
        )
    for warning in m.get("warnings", []):  # what the run warned of in the terminal and run.log
        parts.append(f'<div class="warn"><b>Warning.</b> {esc(warning)}</div>')
    parts.append(f"<h3>Key statistics</h3>{key_statistics(run.stats)}")
    parts.append('<div class="grid">')
    parts.append(f"<div><h3>Model</h3>{pairs(m.get('model', {}))}</div>")
    parts.append(f"<div><h3>Data</h3>{pairs(data)}</div>")
    parts.append(f"<div><h3>Counts</h3>{pairs(m.get('counts', {}))}</div>")
    timings = [{"stage": k, **v} for k, v in m.get("timings", {}).items()]
    parts.append(f"<div><h3>Stage timings (s)</h3>{table(timings) if timings else ''}</div>")
    parts.append("</div>")
    parts.append(f"<details><summary>Options</summary>{pairs(m.get('options', {}))}</details>")
    if run.config is not None:
        parts.append(
            f"<details><summary>config.yaml</summary><pre>{esc(run.config)}</pre></details>"
        )
    environment = {k: m.get(k) for k in ("versions", "python", "platform", "git_revision")}
    parts.append(f"<details><summary>Environment</summary>{pairs(environment)}</details>")
    parts.append("<h3>Figures</h3>")
    if run.figures:
        parts += [image(f, f.stem) for f in run.figures]
    else:
        parts.append(f"<p>No figures saved; <code>entrain plot {esc(run.path)}</code> redraws.</p>")
    parts.append("<h3>Tables</h3>")
    parts += [table_file(t) for t in run.tables]
    return "\n".join(parts)


def comparison_section(command: str, runs: list[Run]) -> str:
    """The headline of each run side by side, and the command's comparison figures."""
    rows = [
        {
            "run": f'<a href="#{r.anchor}">{esc(r.label)}</a>',
            "data": esc(r.manifest.get("dataset", {}).get("data_source", "?")),
            **r.headline(),
        }
        for r in runs
    ]
    parts = [
        f'<h2 id="compare-{slug(command)}">Comparison: {esc(command)}</h2>',
        stats_table(pd.DataFrame.from_records(rows), lead=("run", "data")),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        paths = [r.path for r in runs]
        try:
            with readable_tables(*paths):  # a damaged table: a note, the page still written
                figures = BY_NAME[command].plot_compare(paths, Path(tmp))
        except UserError as e:
            parts.append(f'<div class="warn">No comparison figure: {esc(e)}</div>')
            figures = []
        parts += [image(f, f.stem, wide=True) for f in figures if f.suffix == ".png"]
    return "\n".join(parts)


def overview(runs: list[Run]) -> str:
    """One row per run at the top of the page: what it is, its status and data, its headline."""
    rows = []
    for r in runs:
        data = r.manifest.get("dataset") or {}
        rows.append(
            {
                "command": esc(r.command),
                "run": f'<a href="#{r.anchor}">{esc(r.label)}</a>',
                "status": esc(r.manifest.get("status", "?")),
                "data": esc(data.get("data_source", "?") if isinstance(data, dict) else "?"),
                **r.headline(),
            }
        )
    lead = ("command", "run", "status", "data")
    return f"<h2>Overview</h2>{stats_table(pd.DataFrame.from_records(rows), lead=lead)}"


def render(runs: list[Run], problems: list[str]) -> str:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.command, []).append(run)
    toc, body = [], []
    for command, group in groups.items():
        items = "".join(f'<li><a href="#{r.anchor}">{esc(r.label)}</a></li>' for r in group)
        if len(group) > 1:
            items += f'<li><a href="#compare-{slug(command)}">comparison of the runs</a></li>'
            body.append(comparison_section(command, group))
        toc.append(f"<li>{esc(command)}<ul>{items}</ul></li>")
        body += [run_section(r) for r in group]
    samples = sum(r.manifest.get("dataset", {}).get("data_source") == "sample" for r in runs)
    notes = []
    if samples:
        notes.append(
            f'<div class="warn">{samples} of {len(runs)} run(s) used the bundled sample data '
            "instead of the real dataset (marked below).</div>"
        )
    if problems:
        items = "".join(f"<li>{esc(p)}</li>" for p in problems)
        notes.append(f'<div class="bad">Not reported:<ul>{items}</ul></div>')
    title = f"entrain report: {len(runs)} run(s)"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1>{''.join(notes)}{overview(runs)}"
        f'<nav><h2 id="contents">Contents</h2><ul>{"".join(toc)}</ul></nav>'
        f"{''.join(body)}</body></html>\n"
    )


# -- entry points ---------------------------------------------------------------------------


def write_report(run_dirs: list[Path], out: Path) -> tuple[Path, list[Run], list[str]]:
    """Report every readable run in one page at ``out``; returns the runs and one line per
    run that could not be reported. Only when none could is it an error."""
    from . import expand_runs

    if out.is_dir():  # --out DIR: the page goes inside it
        out = out / REPORT
    runs, problems = [], []
    for path in expand_runs(run_dirs):
        try:
            runs.append(load_run(path))
        except UserError as e:
            problems.append(str(e))
    if not runs:
        raise UserError("no run could be reported: " + "; ".join(problems))
    atomic_write_text(out, render(runs, problems))
    return out, runs, problems


RESULTS = "results.json"
RESULTS_SCHEMA = 1
TERMINAL_ROWS = 8  # the results table a finished run prints


def results(run: Run) -> dict[str, Any]:
    """What ``results.json`` holds, one schema for every study: the command, the run, whether
    the bundled sample stood in for the data, the headline (the first key statistic) and every
    key statistic (statistic, value, ci_lo, ci_hi, n, p, note), as the report shows them."""
    rows = json.loads(run.stats.to_json(orient="records"))  # NaN -> null
    dataset = run.manifest.get("dataset") or {}
    return {
        "schema": RESULTS_SCHEMA,
        "command": run.command,
        "run_dir": str(run.path),
        "data_source": dataset.get("data_source") if isinstance(dataset, dict) else None,
        "headline": rows[0] if rows else None,
        "statistics": rows,
    }


def terminal_rows(stats: pd.DataFrame) -> pd.DataFrame:
    """The few key statistics a finished run prints: the study's own first ones, then prompt
    length's baseline and the headline metric's controlled figure, and the best signal's PRR,
    at most ``TERMINAL_ROWS``."""
    names = stats["statistic"]
    own = ~names.str.match(r"(baseline |Spearman rho\(.*\) raw |partial rho|PRR )")
    own &= ~names.str.contains("n_prompt_")  # the length rows: once, as the baseline below
    picks = list(stats.index[own][:4])
    for pattern in (r"baseline n_prompt_tokens", r"partial rho", r"PRR "):
        picks += list(stats.index[names.str.startswith(pattern)][:1])
    return stats.loc[picks[:TERMINAL_ROWS]]


def finish_run(run_dir: Path, log_to: str | None = None) -> tuple[str, Run, list[str]]:
    """The end of every study: RUN/report.html and RUN/results.json, and the run sent to a
    tracker if asked; returns the report's path, the run, and where the tracker put it."""
    path, runs, _ = write_report([run_dir], run_dir / REPORT)
    atomic_write_text(run_dir / RESULTS, json.dumps(results(runs[0]), indent=2) + "\n")
    return str(path), runs[0], (log_runs(runs, log_to) if log_to else [])


def log_runs(runs: list[Run], target: str) -> list[str]:
    """Send each run (config, identity, key statistics, figures, tables) to a tracker."""
    from ..runs import tracking

    return [tracking.log_run(r.path, target, r.stats.to_dict(orient="records")) for r in runs]
