"""Options shared by several commands, and the error boundary every command runs inside."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ..errors import UserError
from ..ui import console, setup_logging

T = TypeVar("T")

Model = Annotated[
    str | None,
    typer.Option(
        help="Hub id, local Hugging Face model directory (any saved checkpoint), or .gguf "
        "file. Default: the embedded SmolLM2-135M-Instruct (offline).",
        show_default=False,
    ),
]
DataFile = Annotated[
    Path | None,
    typer.Option(
        help="Local .jsonl/.json/.parquet with the dataset's fields; skips the hub.",
        show_default=False,
    ),
]
BatchSize = Annotated[int, typer.Option(help="Prompts per forward pass.")]
Device = Annotated[str, typer.Option(help="auto (GPU if any), cpu, cuda or cuda:N.")]
Dtype = Annotated[
    str,
    typer.Option(
        help="Model weights: auto (bfloat16 on GPU, float32 on CPU), float32, "
        "float16, bfloat16. Metrics are always float32."
    ),
]
Layers = Annotated[
    str,
    typer.Option(
        help="-1 (after the final norm), 0..L (residual stream after block i; "
        "0 = embeddings), lists like 0,10,-1, ranges like 4-8, or all."
    ),
]
Metrics = Annotated[
    str,
    typer.Option(
        help="Comma list of sparsity metrics (l1, l1_rel, l0_outlier, "
        "top{1,5,10}_energy, top{1,5,10}_l1share, eff_rank, eff_rank_l1, "
        "hoyer, gini, participation_ratio) or all."
    ),
]
Limit = Annotated[
    int | None,
    typer.Option(
        help="Use only the first N examples (after seeded sampling, if any).", show_default=False
    ),
]
Engine = Annotated[
    str, typer.Option(help="Generation: auto (vLLM when installed), vllm, or hf (transformers).")
]
MaxTokens = Annotated[int, typer.Option(help="Tokens generated per prompt at most.")]
Seed = Annotated[int, typer.Option(help="Seeds every random choice (bootstrap included).")]
RunDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--run-dir", help="Exact run directory (required with --resume).", show_default=False
    ),
]
RunsDir = Annotated[
    Path | None,
    typer.Option(
        help="Parent of new run directories. Default: $ENTRAIN_RUNS_DIR, else ./runs.",
        show_default=False,
    ),
]
Resume = Annotated[
    bool,
    typer.Option(
        help="Continue the run in --run-dir: finished examples are kept, those of missing or "
        "unreadable shards redone; refused if the settings or the model's weights changed."
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes.")]


def split_list(value: str | None) -> list[str] | None:
    """'a, b,c' -> ['a', 'b', 'c']; None or 'all' -> None (meaning everything)."""
    if value is None or value.strip() == "all":
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def typed_config(cls: type[T], params: dict[str, Any], **converted: Any) -> T:
    """A command's typed config from its parameters (pass ``locals()``): each field of ``cls``
    takes the parameter of the same name; ``converted`` gives the values that need parsing."""
    values = {f.name: params[f.name] for f in dataclasses.fields(cls) if f.name in params}
    return cls(**(values | converted))


def print_done(run_dir: Path) -> None:
    console.print(
        f"[green]done:[/] {run_dir}\n  tables:  {run_dir / 'tables'}\n"
        f"  figures: {run_dir / 'figures'}",
        highlight=False,
    )


def command(func):
    """Turn a UserError into one red line on stderr and exit code 2, no traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        setup_logging(bool(kwargs.get("quiet", False)))
        try:
            return func(*args, **kwargs)
        except UserError as e:
            console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper
