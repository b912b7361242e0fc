"""--help that fits any terminal: options in panels, in the order a person needs them (data,
model, measurement, output, then scale-out and vLLM last), with no name or value cut.

Rich's option table cut long names at 80 columns (``--pipeline-parallel-si…``); click's plain
formatter wraps instead, so the commands use it, with one section per panel.
"""

from __future__ import annotations

import difflib
from typing import Any

import typer.core

PANELS = ("Data", "Model", "Measurement", "Output", "Scale-out", "vLLM")
_PANEL_OF = {
    "Data": """dataset data_file split subset limit sample categories noise splits text_field
        messages_field template system chat id_field label label_order group pair_id condition
        reference answer_field pool_file pool_size prompting strategy curriculum shots n_levels
        entities relations rules deductible_rules attach n_atomic n_derived negatives
        max_per_relation num_test run_dirs""",
    "Model": """model device dtype batch_size engine max_tokens temperature top_p llm_size steps
        lr warmup_ratio compile eval_batch_size save_every""",
    "Measurement": """layers positions metrics save_hidden grade rank_metric n_boot min_nucleus
        bins eval_every rank_eval seed seeds""",
    "Output": "run_dir runs_dir out resume log_to quiet config",
    "Scale-out": "shard device_map max_memory",
    "vLLM": """tensor_parallel_size pipeline_parallel_size data_parallel_size
        distributed_executor_backend gpu_memory_utilization max_model_len""",
}
PANEL_OF = {name: panel for panel, names in _PANEL_OF.items() for name in names.split()}


def panel(name: str) -> str:
    """The help panel of a config field (the study's own options: Measurement)."""
    return PANEL_OF.get(name, "Measurement")


def first_sentence(text: str | None) -> str:
    """A command's one-line summary for the command list (click would cut it with '...'): its
    help up to the first sentence end, or the first colon or semicolon after a clause."""
    line = (text or "").strip().split("\n\n")[0].replace("\n", " ")
    cuts = [i for mark in (". ", "; ", ": ") if (i := line.find(mark)) >= 30 or mark == ". "]
    cuts = [i for i in cuts if i >= 0]
    head = line[: min(cuts)] if cuts else line.rstrip(".")
    return head if head.endswith(("?", ".")) else head + "."


class PanelCommand(typer.core.TyperCommand):
    """A command whose options are listed in :data:`PANELS` order, one section each."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                title = getattr(param, "rich_help_panel", None) or "Options"
                sections.setdefault(title, []).append(record)
        order = [*PANELS, "Options"]
        for title in sorted(sections, key=lambda t: order.index(t) if t in order else len(order)):
            with formatter.section(title):
                formatter.write_dl(sections[title])


class Group(typer.core.TyperGroup):
    """The root command: a study name given without its group (``entrain rankmath``) or
    misspelt is answered with the command meant."""

    def resolve_command(self, ctx: Any, args: list[str]):
        try:
            return super().resolve_command(ctx, args)
        except Exception as e:  # click's UsageError, of the click copy Typer uses
            if type(e).__name__ != "UsageError":
                raise
            name = args[0] if args else ""
            for group, sub in self.commands.items():
                if name in getattr(sub, "commands", {}):
                    message = f"No such command '{name}'; it is 'entrain {group} {name}'."
                    raise type(e)(message, ctx) from None
            close = difflib.get_close_matches(name, list(self.commands), n=1)
            if close:
                message = f"No such command '{name}'; did you mean 'entrain {close[0]}'?"
                raise type(e)(message, ctx) from None
            raise
