"""Dataset registry: one entry per dataset, resolved as --data-file, then hub, then sample.

Falling back to the bundled sample is loud (a warning, and ``data_source: sample`` in the
manifest), never silent.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import assets_dir, hub
from ..errors import UserError
from .texts import described

log = logging.getLogger("entrain")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    hub_id: str | None  # None: only --data-file or the bundled sample
    split: str  # the default split
    fields: tuple[str, ...]  # required in every row
    id_field: str | None = None  # a stable id column; None: "<name>-<row index>"
    config: str | None = None
    text: str | None = None  # str.format template of the prompt text, for generation studies
    answer_field: str | None = None  # gold answers (GSM8K style: the number after ####)
    about: str = ""
    splits: tuple[str, ...] = ()  # every split a study may ask for (empty: only ``split``)
    columns: tuple[str, ...] | None = None  # read only these from the hub (large datasets)
    list_fields: tuple[str, ...] = ()  # required fields that hold lists (the others: scalars)

    def check_split(self, split: str) -> str:
        known = self.splits or (self.split,)
        if split not in known:
            raise UserError(
                f"dataset '{self.name}' has no split '{split}'; its splits: {', '.join(known)}"
            )
        return split

    def prompt_text(self, row: dict[str, Any]) -> str:
        if self.text is None:
            raise UserError(f"dataset '{self.name}' has no prompt text for generation")
        return self.text.format(**row)

    @property
    def sample_file(self) -> str:
        return f"{self.name}.jsonl"


REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            name="math500",
            hub_id="HuggingFaceH4/MATH-500",
            split="test",
            fields=("problem", "solution", "answer", "subject", "level", "unique_id"),
            id_field="unique_id",
            about="MATH-500 competition problems with difficulty levels 1-5",
        ),
        DatasetSpec(
            name="math_train",
            hub_id="DigitalLearningGmbH/MATH-lighteval",
            split="train",
            # MATH's own files say `type`, PRM800K's split `subject`: either is read
            fields=("problem", "solution", "level"),
            about="MATH training problems with full solutions (demonstrations for `cot`)",
        ),
        DatasetSpec(
            name="gsm8k",
            hub_id="openai/gsm8k",
            config="main",
            split="test",
            fields=("question", "answer"),
            text="{question}",
            answer_field="answer",
            about="grade-school maths word problems; the gold answer follows ####",
        ),
        DatasetSpec(
            name="writingprompts",
            hub_id="euclaise/writingprompts",
            split="validation",
            fields=("prompt", "story"),
            text="{prompt}",
            about="Reddit WritingPrompts premises (open-ended story writing)",
        ),
        DatasetSpec(
            name="xsum",
            hub_id="EdinburghNLP/xsum",
            split="test",
            fields=("document", "summary", "id"),
            id_field="id",
            text="Please summarize the following text:\n {document}",
            about="BBC articles to summarize (the instruction is upstream's)",
        ),
        DatasetSpec(
            name="mmlu_pro",
            hub_id="TIGER-Lab/MMLU-Pro",
            split="test",
            fields=("question_id", "question", "options", "answer", "answer_index", "category"),
            id_field="question_id",
            list_fields=("options",),
            about="MMLU-Pro multiple choice (up to 10 options) in 14 categories",
        ),
        DatasetSpec(
            name="deepmath",
            hub_id="zwhe99/DeepMath-103K",
            split="train",
            fields=("question", "difficulty"),
            columns=("question", "final_answer", "difficulty", "topic"),
            about="DeepMath-103K problems with a continuous difficulty score (about 1-10)",
        ),
        DatasetSpec(
            name="longreason",
            hub_id="lz1bytedance/LongReason",
            split="8k",
            splits=("original", "expanded", "8k", "16k", "32k", "64k", "128k"),
            fields=("example_idx", "background", "question", "answer"),
            id_field="example_idx",
            about="LongReason multiple-choice reasoning (A-E) with contexts expanded to 8k-128k",
        ),
        DatasetSpec(
            name="conflict",
            hub_id=None,
            split="all",
            fields=(
                "main_entity",
                "parametric_knowledge",
                "conflicting_knowledge",
                "question_about_conflicting_segments",
                "question_about_nonconflicting_segments",
            ),
            about="knowledge-conflict pairs (Wang et al., COLM 2024): --data-file or the sample",
        ),
        DatasetSpec(
            name="probe",
            hub_id=None,
            split="all",
            fields=(
                "id",
                "text",
                "answer",
                "difficulty",
                "operation",
                "pair",
                "phrasing",
            ),
            id_field="id",
            # multi_step (true/false) is checked where --label names it: not a text field
            about="arithmetic questions of graded difficulty in two phrasings (`probe`'s sample)",
        ),
    ]
}


def problem_key(text: str) -> str:
    """A problem's text reduced to what identifies it: Unicode-normalised, lower case, no
    whitespace and no ``$``, so re-typeset copies of one problem compare equal."""
    return re.sub(r"[\s$]+", "", unicodedata.normalize("NFKC", text)).lower()


def drop_overlap(
    rows: list[dict[str, Any]], ids: list[str], exclude: list[str], text_field: str = "problem"
) -> tuple[list[dict[str, Any]], list[str], int]:
    """(rows, ids) without any row whose ``text_field`` matches an ``exclude`` text or an earlier
    row (by :func:`problem_key`), in their order, and how many were dropped."""
    seen = {problem_key(t) for t in exclude}
    kept_rows, kept_ids = [], []
    for row, id_ in zip(rows, ids, strict=True):
        key = problem_key(str(row[text_field]))
        if key not in seen:
            seen.add(key)
            kept_rows.append(row)
            kept_ids.append(id_)
    return kept_rows, kept_ids, len(rows) - len(kept_rows)


def parse_level(value, where: str) -> int:
    """MATH levels are ints in MATH-500 and 'Level 3' strings in the original MATH; a level
    is a whole number from 1 up."""
    try:
        text = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
        level = int(text.split()[-1])
    except (ValueError, IndexError):
        level = 0
    if level < 1 or isinstance(value, bool):
        raise UserError(
            f"{where}: field 'level' is {value!r}, not a level from 1 up like 3 or 'Level 3'"
        )
    return level


def dataset_names(keep: Callable[[DatasetSpec], bool]) -> tuple[str, ...]:
    """The registered datasets a study can use: its ``--dataset`` choices."""
    return tuple(sorted(name for name, spec in REGISTRY.items() if keep(spec)))


def get_spec(name: str) -> DatasetSpec:
    if name not in REGISTRY:
        raise UserError(f"unknown dataset '{name}'; known datasets: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


@dataclass
class LoadedData:
    spec: DatasetSpec
    rows: list[dict[str, Any]]
    source: str  # file | hub | sample
    location: str
    split: str = ""  # empty: the spec's default split
    ids: list[str] = field(init=False)

    def __post_init__(self) -> None:
        key = self.spec.id_field
        self.ids = [
            str(row[key]) if key else f"{self.spec.name}-{i}" for i, row in enumerate(self.rows)
        ]
        if len(set(self.ids)) != len(self.ids):
            raise UserError(
                f"{self.location}: the id field '{key}' has duplicate values; ids must be unique"
            )

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the rows; computed once (the identity and the manifest both need it)."""
        blob = json.dumps(self.rows, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    def identity(self) -> dict[str, Any]:
        return {
            "id": self.spec.name,
            "hub_id": self.spec.hub_id,
            "split": self.split or self.spec.split,
            "data_source": self.source,
            "location": self.location,
            "rows": len(self.rows),
            "fingerprint": self.fingerprint,
        }


def _check_fields(rows: list, spec: DatasetSpec, where: str, line_of=None) -> None:
    """Every row is an object holding every required field, each a string or a number (a
    list where the spec says so): a null, an object or a list where text is expected would
    otherwise be read as the text 'None' or a stringified dict."""
    for i, row in enumerate(rows):
        at = f"line {line_of(i)}" if line_of else f"row {i}"
        if not isinstance(row, dict):
            raise UserError(
                f"{where}, {at}: expected an object with the fields {', '.join(spec.fields)}, "
                f"got {type(row).__name__} {str(row)[:40]!r}"
            )
        missing = [f for f in spec.fields if f not in row]
        if missing:
            raise UserError(
                f"{where}, {at}: missing field(s) {', '.join(missing)}; "
                f"every {spec.name} row needs {', '.join(spec.fields)} (it has: {', '.join(row)})"
            )
        for name in spec.fields:
            value, wanted = row[name], list if name in spec.list_fields else (str, int, float)
            if not isinstance(value, wanted) or isinstance(value, bool) or value == []:
                kind = "a non-empty list" if wanted is list else "a string or a number"
                raise UserError(
                    f"{where}, {at}: field '{name}' must be {kind}, not {described(value)}"
                )


def _object_rows(text: str) -> list[dict[str, Any]] | None:
    """The rows of a JSON object file, parsed once: ``{"meta": ..., "data": [row, ...]}``
    (upstream's noisy MMLU-Pro file, and ``qa robustness-export``'s .json), or ``{"group":
    [row, ...], ...}`` (the knowledge-conflict data.json layout: rows in file order, each
    keeping its group name in ``subject`` unless it has one). None for any other text (then
    the file is read as JSON lines)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not obj:
        return None
    if set(obj) == {"meta", "data"} and isinstance(obj["data"], list):
        return obj["data"]
    if all(isinstance(v, list) and all(isinstance(r, dict) for r in v) for v in obj.values()):
        return [{"subject": name, **r} for name, members in obj.items() for r in members]
    return None


def read_data_file(
    path: Path, spec: DatasetSpec, option: str = "--data-file"
) -> list[dict[str, Any]]:
    """Rows of a local JSONL (or JSON list), CSV or Parquet file, validated against ``spec``;
    ``option`` names the command-line option that gave the file, for error messages."""
    if not path.is_file():
        raise UserError(f"{option} {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        import pandas as pd

        try:
            frame = pd.read_csv(path)
        except Exception as e:
            raise UserError(f"{option} {path} is not a readable CSV file ({e})") from None
        # numbers stay numbers, an empty cell is None (as a JSON null)
        rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
        _check_fields(rows, spec, str(path))
        return rows
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:
            raise UserError(f"{option} {path} is not a readable Parquet file ({e})") from None
        _check_fields(rows, spec, str(path))
        return rows
    if suffix not in {".jsonl", ".json"}:
        raise UserError(
            f"{option} {path}: unsupported type '{suffix}'; use .jsonl, .json, .csv or .parquet"
        )
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    _warn_invalid_utf8(raw, f"{option} {path}")
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{option} {path}: invalid JSON at line {e.lineno} ({e.msg})") from None
        _check_fields(rows, spec, str(path))
        return rows
    rows = _object_rows(text) if suffix == ".json" else None
    if rows is not None:
        _check_fields(rows, spec, str(path))
        return rows
    rows, lines = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{option} {path}, line {lineno}: not valid JSON ({e.msg}); "
                "each line must be one JSON object"
            ) from None
        if not isinstance(row, dict):
            raise UserError(f"{option} {path}, line {lineno}: expected a JSON object")
        rows.append(row)
        lines.append(lineno)
    _check_fields(rows, spec, f"{option} {path}", line_of=lambda i: lines[i])
    return rows


def _warn_invalid_utf8(raw: bytes, where: str) -> None:
    """A warning naming the lines whose bytes are not UTF-8 (read with U+FFFD in their place),
    never a silent change of the text."""
    try:
        raw.decode("utf-8")
        return
    except UnicodeDecodeError:
        pass
    bad = []
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(lineno)
    more = f" (and {len(bad) - 1} more line(s))" if len(bad) > 1 else ""
    log.warning(
        "%s, line %d%s: bytes that are not UTF-8, read as U+FFFD (the replacement "
        "character); save the file as UTF-8 to keep that text",
        where,
        bad[0],
        more,
    )


def sample_path(spec: DatasetSpec) -> Path:
    return assets_dir() / "samples" / spec.sample_file


def _of_split(rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """Files holding several splits mark each row with a ``split`` field; keep ``split``'s."""
    if rows and all("split" in r for r in rows):
        return [r for r in rows if str(r["split"]) == split]
    return rows


def _hub_rows(spec: DatasetSpec, split: str) -> list[dict[str, Any]]:
    """Rows of ``spec``'s hub dataset (or its local cache), validated; library errors pass up."""
    hub.offline_if_unreachable()
    import datasets

    kwargs = {"columns": list(spec.columns)} if spec.columns else {}
    ds = datasets.load_dataset(spec.hub_id, spec.config, split=split, **kwargs)
    rows = [dict(r) for r in ds]
    _check_fields(rows, spec, spec.hub_id)
    return rows


def load(
    spec: DatasetSpec,
    data_file: Path | None = None,
    split: str | None = None,
    option: str = "--data-file",
) -> LoadedData:
    """Rows of ``spec`` (its ``split``, default the spec's): the given file, else the hub (or
    its cache), else the bundled sample. A file whose rows carry a ``split`` field is read as
    holding several splits; the others are taken as the requested split. ``option`` names the
    command-line option that gave the file, for error messages."""
    split = spec.check_split(split or spec.split)
    if data_file is not None:
        rows = _of_split(read_data_file(data_file, spec, option), split)
        return LoadedData(spec, rows, "file", str(data_file.resolve()), split)
    path = sample_path(spec)
    if spec.hub_id is None:
        log.warning(
            "%s has no hub copy; using the bundled sample %s: results are a smoke test, "
            "pass --data-file for the study",
            spec.name,
            path.name,
        )
    else:
        try:
            rows = _hub_rows(spec, split)
            return LoadedData(spec, rows, "hub", f"{spec.hub_id}:{split}", split)
        except UserError:
            raise
        except Exception as e:  # offline, no cache, hub error: the sample stands in, loudly
            all_rows = read_data_file(path, spec)
            log.warning(
                "could not load %s from the hub or its cache (%s); using the bundled sample "
                "%s (%s rows): results are a smoke test, not the study; pass --data-file "
                "for the study",
                spec.hub_id,
                hub.offline_reason() or type(e).__name__,
                path.name,
                len(all_rows),
            )
            return LoadedData(spec, _of_split(all_rows, split), "sample", str(path), split)
    rows = _of_split(read_data_file(path, spec), split)
    return LoadedData(spec, rows, "sample", str(path), split)


HUB_PREFIX = "hub:"


def require_fields(rows: list[dict[str, Any]], location: str, wanted: dict[str, str]) -> None:
    """Each ``wanted`` field (keyed by the option that named it) must be in every row; the
    error names the fields the data has."""
    present = list(dict.fromkeys(k for row in rows for k in row))
    for option, name in wanted.items():
        lacking = [i for i, row in enumerate(rows) if name not in row]
        if len(lacking) == len(rows):
            raise UserError(
                f"{option} '{name}' is not a field of {location}; its fields: {', '.join(present)}"
            )
        if lacking:
            raise UserError(
                f"{option} '{name}' is missing from row {lacking[0]} of {location} "
                f"({len(lacking)} row(s) lack it); give every row that field"
            )


def load_user(
    dataset: str | None,
    data_file: Path | None,
    *,
    split: str | None,
    subset: str | None,
    id_field: str | None,
    fields: dict[str, str],
    default: str,
) -> LoadedData:
    """Rows of the user's own data: ``--data-file`` (JSONL, JSON list, CSV, Parquet; rows
    carrying a ``split`` field are filtered by ``--split`` when given), else ``--dataset``
    (``hub:OWNER/NAME`` with ``--split``/``--subset``, or a registered name), else the
    registered ``default`` (its bundled sample, loudly). ``fields`` maps each option to the
    field it names; every one, and ``--id-field``, must be in every row, and some row must be
    left. The id is ``--id-field``'s value, else ``<name>-<row number>``."""
    wanted = {**fields, **({"--id-field": id_field} if id_field else {})}
    if data_file is not None:
        spec = DatasetSpec(data_file.stem, None, split or "all", (), id_field)
        rows = read_data_file(data_file, spec)
        if split is not None:
            if rows and not all("split" in r for r in rows):
                raise UserError(f"--split {split}: {data_file} has no 'split' field to select by")
            rows = _of_split(rows, split)
        source, location = "file", str(data_file.resolve())
    elif dataset is not None and dataset.startswith(HUB_PREFIX):
        hub_id = dataset.removeprefix(HUB_PREFIX)
        if hub_id.count("/") != 1 or not all(hub_id.split("/")):
            raise UserError(f"--dataset {dataset}: write a hub dataset as hub:OWNER/NAME")
        spec = DatasetSpec(hub_id.split("/")[1], hub_id, split or "train", (), id_field, subset)
        try:
            rows = _hub_rows(spec, spec.split)
        except UserError:
            raise
        except Exception as e:
            raise UserError(
                f"could not load {hub_id} (subset {subset}, split {spec.split}) from the hub or "
                f"its cache ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "check --subset/--split, or pass the rows with --data-file"
            ) from None
        source, location = "hub", f"{hub_id}:{spec.split}"
    else:
        if subset is not None:
            raise UserError("--subset is for a hub dataset: --dataset hub:OWNER/NAME")
        data = load(get_spec(dataset or default), None, split)
        spec, rows, source, location = data.spec, data.rows, data.source, data.location
        if id_field is not None:
            spec = replace(spec, id_field=id_field)
    if not rows:
        raise UserError(f"{location} has no rows (split {spec.split}); check the data and --split")
    require_fields(rows, location, wanted)
    return LoadedData(spec, rows, source, location, spec.split)
