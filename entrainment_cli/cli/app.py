"""`entrain`: the root command, built from the study registry; nothing heavy is imported until
a command runs, so that --help and option errors answer at once."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .. import __version__
from ..studies import (
    STUDIES,
    CorrelateAnalyzeConfig,
    ReportConfig,
    RobustnessExportConfig,
    Study,
)
from .build import build_command
from .common import print_done
from .help import Group, PanelCommand, first_sentence
from .merge import merge
from .plot import plot
from .report import report

app = typer.Typer(
    name="entrain",
    cls=Group,
    help="What a model's internals say about how hard an input is: hidden-state sparsity "
    "and token-confidence studies, each written to a run directory.",
    rich_markup_mode=None,  # click's help: wrapped, never cut (see cli/help.py)
    no_args_is_help=True,
    add_completion=False,
    # help wraps at the terminal's width (click's default stops at 80)
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 160},
    pretty_exceptions_show_locals=False,
)
qa = typer.Typer(
    help="Hidden-state sparsity against difficulty.",
    rich_markup_mode=None,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _command(where: typer.Typer, name: str, callback, help: str | None = None) -> None:
    """Register ``callback`` as ``name`` with panelled help and a one-sentence summary."""
    summary = first_sentence(help if help is not None else callback.__doc__)
    where.command(name=name, cls=PanelCommand, short_help=summary)(callback)


def _runner(entry: Study):
    def action(cfg: Any) -> None:
        from ..pipeline import run_study
        from ..runs import tracking

        if cfg.log_to is not None:  # a missing tracker package is found before the work
            tracking.check(cfg.log_to)
        print_done(run_study(entry, cfg), cfg.log_to)

    return action


def _analyze(cfg: CorrelateAnalyzeConfig) -> None:
    from ..correlate.analysis import analyze_runs
    from ..ui import console

    for path in analyze_runs(
        cfg.run_dirs, cfg.out, cfg.min_nucleus, cfg.bins, cfg.n_boot, cfg.seed
    ):
        console.print(str(path), highlight=False)


def _export(cfg: RobustnessExportConfig) -> None:
    from ..qa.robustness import export_variants
    from ..ui import console

    console.print(f"[green]wrote:[/] {export_variants(cfg)}", highlight=False)


for _entry in STUDIES:
    group, _, name = _entry.name.rpartition(" ")
    _command(
        qa if group == "qa" else app,
        name,
        build_command(_entry.config, _runner(_entry), _entry.help, _entry.name),
    )
_command(
    app,
    "correlate-analyze",
    build_command(
        CorrelateAnalyzeConfig,
        _analyze,
        """Re-analyze finished correlate runs from their tokens. Writes stats.csv|tex,
bins.csv, fit.json and figures in each run; several runs also give one joint table and a grid
figure (models as rows, datasets as columns) in --out.""",
    ),
)
_command(
    qa,
    "robustness-export",
    build_command(
        RobustnessExportConfig,
        _export,
        """Write the noisy MMLU-Pro dataset of `qa robustness` to a .jsonl or .json file. Every
question with its seeded variants; no model is loaded.""",
    ),
)
app.add_typer(qa, name="qa")
_command(app, "plot", plot)
_command(app, "report", build_command(ReportConfig, report, report.__doc__))
_command(app, "merge", merge)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"entrain {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Measure what a model's internals say about how hard an input is."""


def main() -> None:
    app()
