"""`--log-to wandb|mlflow`: a finished run sent to the experiment tracker people already use.

Each entrain run becomes one tracker run holding the resolved config, the model's and data's
identity (manifest), the key statistics (value, CI, N, p) as metrics, every figure and every
table. The tracker packages are optional extras and imported only here, only when asked.
Where runs go follows each tracker's own settings: W&B runs offline into RUN/wandb/ unless
WANDB_MODE/WANDB_DIR say otherwise (`wandb sync` uploads later); MLflow uses
MLFLOW_TRACKING_URI (default: its local store, ./mlflow.db) and MLFLOW_EXPERIMENT_NAME.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from .rundir import MANIFEST, read_manifest, saved_files

PROJECT = "entrain"  # W&B project and MLflow experiment unless the environment names one


def check(target: str) -> None:
    """Refuse a tracker whose package is missing before any work is done (the option's
    choices already name the known trackers)."""
    if importlib.util.find_spec(target) is None:
        raise UserError(
            f"--log-to {target} needs the {target} package: pip install 'entrainment-cli[{target}]'"
        )


def run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config (config.yaml, else the manifest's options) and the run's identity."""
    m = read_manifest(run_dir)
    config_file = run_dir / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else m.get("options")
    return {
        "command": m.get("command"),
        "config": config,
        "model": m.get("model"),
        "dataset": m.get("dataset"),
        "seed": m.get("seed"),
        "status": m.get("status"),
        "run_dir": str(run_dir.resolve()),
    }


def metric_key(statistic: str) -> str:
    """A statistic's label in the characters both trackers accept in a metric name."""
    return " ".join(re.sub(r"[^A-Za-z0-9_\-./ ]+", " ", statistic).split())


def metrics(statistics: list[dict[str, Any]]) -> dict[str, float]:
    """Each finite number of each statistic: KEY (the value), KEY/ci_lo, KEY/ci_hi, KEY/n, KEY/p."""
    out = {}
    for row in statistics:
        key = metric_key(row["statistic"])
        for field, suffix in (("value", ""), ("ci_lo", "/ci_lo"), ("ci_hi", "/ci_hi")):
            out[key + suffix] = row[field]
        out[f"{key}/n"], out[f"{key}/p"] = row["n"], row["p"]
    return {
        k: float(v)
        for k, v in out.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{'model': {'id': x}} -> {'model.id': 'x'}; lists as JSON (MLflow params are strings)."""
    out: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = json.dumps(value) if isinstance(value, list) else str(value)
    return out


def log_run(run_dir: Path, target: str, statistics: list[dict[str, Any]]) -> str:
    """Send one run to ``target``; returns a line saying where it went."""
    check(target)
    logger = {"wandb": _log_wandb, "mlflow": _log_mlflow}[target]
    try:
        return logger(run_dir, run_config(run_dir), metrics(statistics))
    except _tracker_error(target) as e:
        raise UserError(
            f"{target} did not take {run_dir} ({e}); the run itself is saved: send it again "
            f"with `entrain report {run_dir} --log-to {target}`"
        ) from None


def _tracker_error(target: str) -> type[Exception]:
    """The tracker's own error class (its settings, its store, its server)."""
    if target == "wandb":
        import wandb.errors

        return wandb.errors.Error
    import mlflow.exceptions

    return mlflow.exceptions.MlflowException


def _log_wandb(run_dir: Path, config: dict[str, Any], numbers: dict[str, float]) -> str:
    import pandas as pd
    import wandb

    figures, tables = saved_files(run_dir)
    mode = os.environ.get("WANDB_MODE", "offline")
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", PROJECT),
        name=run_dir.name,
        job_type=config["command"].replace(" ", "-"),
        config=config,
        dir=os.environ.get("WANDB_DIR", str(run_dir)),
        mode=mode,
        settings=wandb.Settings(silent=True),
    )
    try:
        run.summary.update(numbers)
        media: dict[str, Any] = {f"figures/{p.stem}": wandb.Image(str(p)) for p in figures}
        media |= {
            f"tables/{p.stem}": wandb.Table(dataframe=pd.read_csv(p))
            for p in tables
            if p.suffix == ".csv"
        }
        run.log(media)
        artifact = wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]+", "-", run_dir.name), "entrain-run")
        for path in [run_dir / MANIFEST, *tables]:
            artifact.add_file(str(path), name=str(path.relative_to(run_dir)))
        run.log_artifact(artifact)
        where = f"W&B run {run.id} ({mode}) in {Path(run.dir).parent}"
    finally:
        run.finish()
    return where


def _log_mlflow(run_dir: Path, config: dict[str, Any], numbers: dict[str, float]) -> str:
    import mlflow

    figures, tables = saved_files(run_dir)
    mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT))
    tags = {
        "command": config["command"],
        "model": str((config["model"] or {}).get("id")),
        "data_source": str((config["dataset"] or {}).get("data_source")),
    }
    with mlflow.start_run(run_name=run_dir.name, tags=tags) as run:
        mlflow.log_params(flatten(config))
        mlflow.log_metrics(numbers)
        mlflow.log_dict(config, "config.json")
        mlflow.log_artifact(str(run_dir / MANIFEST))
        for path in figures:
            mlflow.log_artifact(str(path), "figures")
        for path in tables:
            mlflow.log_artifact(str(path), "tables")
        return f"MLflow run {run.info.run_id} in {mlflow.get_tracking_uri()}"
