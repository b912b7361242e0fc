"""Multiple-choice evaluation and last-prompt sparsity of the knowledge-graph model.

Per query (spec 2.7): each of the 10 options is scored by the mean cross-entropy of its answer
tokens and EOS after the prompt ``Q<h> P<r> ``; the prediction is the lowest score. Unlike
upstream this runs under ``inference_mode``, batches many queries per forward, and draws
negatives that are never a true answer (science.kg). The hidden state at the prompt's
trailing space (the position that predicts the answer) goes through the shared probe pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..engines.probe import HiddenProbe, batches
from ..science import kg, stats


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def query_ids(queries: Sequence[kg.Query]) -> list[str]:
    """``{split}-{index}``: the key of each query in ``kg/queries.parquet`` and the eval table."""
    return [f"{q.split}-{i}" for i, q in enumerate(queries)]


class Evaluator:
    """Scores every query of every split and measures its prompt's hidden state."""

    def __init__(
        self,
        model,
        tokenizer,
        queries: Sequence[kg.Query],
        layers: list[int],
        metrics: list[str],
        device: str,
        amp: torch.dtype | None = None,
        batch_queries: int = 64,
    ):
        self.model, self.queries = model, list(queries)
        self.layers, self.metrics, self.device, self.amp = layers, metrics, device, amp
        self.batch_queries = batch_queries
        self.pad, self.tokenizer = tokenizer.pad_token_id, tokenizer
        eos = tokenizer.eos_token_id
        self.prompts = [encode(tokenizer, kg.prompt_text(q.h, q.r)) for q in self.queries]
        self.answers = [
            [encode(tokenizer, kg.entity(o)) + [eos] for o in q.options] for q in self.queries
        ]
        self.frame = pd.DataFrame(
            {
                "id": query_ids(self.queries),
                "split": [q.split for q in self.queries],
                "h": [q.h for q in self.queries],
                "r": [q.r for q in self.queries],
                "t": [q.t for q in self.queries],
                "kind": [q.kind for q in self.queries],
                "rule_length": [q.rule_length for q in self.queries],
                "prior_credit": [q.prior_credit for q in self.queries],
                "popularity_credit": [q.popularity_credit for q in self.queries],
            }
        )

    def prompt_lengths(self) -> dict[str, int]:
        """Each query's prompt length in tokens, by id (the length control)."""
        return dict(zip(self.frame["id"], map(len, self.prompts), strict=True))

    def _scores(self, chunk: range) -> torch.Tensor:
        """[len(chunk), options] mean answer-token cross-entropy."""
        return self._score_rows([self.prompts[i] for i in chunk], [self.answers[i] for i in chunk])

    def _score_rows(self, prompts: list[list[int]], answers: list[list[list[int]]]) -> torch.Tensor:
        """[len(prompts), answers each] mean cross-entropy of each answer after its prompt."""
        rows, starts = [], []
        for prompt, options in zip(prompts, answers, strict=True):
            for answer in options:
                rows.append(prompt + answer)
                starts.append(len(prompt))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for k, (row, start) in enumerate(zip(rows, starts, strict=True)):
            ids[k, : len(row)] = torch.as_tensor(row)
            mask[k, : len(row)] = 1
            labels[k, start : len(row)] = ids[k, start : len(row)]
        ids, mask, labels = (x.to(self.device) for x in (ids, mask, labels))
        logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        ce = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), labels[:, 1:], reduction="none"
        )
        per_row = ce.sum(1) / (labels[:, 1:] != -100).sum(1)
        return per_row.view(len(prompts), -1)

    @torch.inference_mode()
    def rank(
        self, per_split: int, n_entities: int, true_tails: list[set[int]], prior: list[dict]
    ) -> pd.DataFrame:
        """Filtered ranking of the gold among all entities for the first ``per_split``
        queries of each split, no option sampling at all: one row per query with the model's
        rank and the relation prior's (``prior[i]``: entity -> training count as a tail of the
        relation, the query's own fact left out). Other true answers are filtered out; ties
        count half."""
        eos = self.answers[0][0][-1]
        every = [encode(self.tokenizer, kg.entity(e)) + [eos] for e in range(n_entities)]
        chosen = [
            i
            for split in kg.SPLITS
            for i in [k for k, q in enumerate(self.queries) if q.split == split][:per_split]
        ]
        per_forward = max(1, 10 * self.batch_queries // n_entities)
        rows = []
        with torch.autocast(
            self.device.split(":")[0], dtype=self.amp, enabled=self.amp is not None
        ):
            for s in range(0, len(chosen), per_forward):
                part = chosen[s : s + per_forward]
                scores = (
                    self._score_rows([self.prompts[i] for i in part], [every] * len(part))
                    .cpu()
                    .double()
                    .numpy()
                )
                for i, row in zip(part, scores, strict=True):
                    q = self.queries[i]
                    keep = np.ones(n_entities, bool)
                    keep[list(true_tails[i] - {q.t})] = False
                    counts = np.array([prior[i].get(e, 0) for e in range(n_entities)], float)
                    rows.append(
                        {
                            "id": query_ids(self.queries)[i],
                            "split": q.split,
                            "rank": _rank(-row[keep], -row[q.t]),
                            "prior_rank": _rank(counts[keep], counts[q.t]),
                        }
                    )
        return pd.DataFrame(rows)

    @torch.inference_mode()
    def __call__(self, step: int, keep_vectors: bool = False) -> pd.DataFrame:
        """One row per (query, layer) at this training step. ``keep_vectors``: the probed
        vectors stay in ``self.vectors`` ({(layer, "last-prompt"): [queries, d]}, float32),
        for ``--save-hidden``."""
        was_training = self.model.training
        self.model.eval()
        with torch.autocast(
            self.device.split(":")[0], dtype=self.amp, enabled=self.amp is not None
        ):
            scores = torch.cat(
                [
                    self._scores(range(s, min(s + self.batch_queries, len(self.queries))))
                    for s in range(0, len(self.queries), self.batch_queries)
                ]
            ).cpu()
            probe = HiddenProbe(self.model, self.layers, ["last-prompt"])
            measured: dict[int, dict[str, np.ndarray]] = {
                layer: {m: np.empty(len(self.queries)) for m in self.metrics}
                for layer in self.layers
            }
            kept: dict[tuple[int, str], np.ndarray] = {}
            for batch in batches(self.prompts, 8 * self.batch_queries, self.pad, self.device):
                out = probe.measure(batch.input_ids, batch.attention_mask, self.metrics)
                for (layer, _), values in out.items():
                    for name, tensor in values.items():
                        measured[layer][name][batch.indices] = tensor.double().cpu().numpy()
                for key, v in probe.vectors.items() if keep_vectors else ():
                    v = v.float().cpu().numpy()
                    kept.setdefault(key, np.empty((len(self.queries), v.shape[1]), np.float32))
                    kept[key][batch.indices] = v
            self.vectors = kept
        if was_training:
            self.model.train()
        gold = torch.tensor([q.gold for q in self.queries])
        pred = scores.argmin(1)
        base = self.frame.assign(
            step=step,
            correct=(pred == gold).numpy(),
            pred=[q.options[p] for q, p in zip(self.queries, pred.tolist(), strict=True)],
            gold_loss=scores.gather(1, gold[:, None])[:, 0].double().numpy(),
        )
        frames = [base.assign(layer=layer, **measured[layer]) for layer in self.layers]
        return pd.concat(frames, ignore_index=True)


BASELINES = ["prior_accuracy", "popularity_accuracy", "accuracy_prior_wrong", "n_prior_wrong"]


def baselines(evals: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group: the relation-prior and popularity answerers' accuracy on the same options,
    and the model's accuracy on the queries where the relation prior picks wrong."""
    wrong = evals["prior_credit"] == 0
    frame = evals.assign(
        _wrong_correct=evals["correct"].where(wrong).astype(float), _wrong=wrong.astype(int)
    )
    out = frame.groupby(keys, sort=False).agg(
        prior_accuracy=("prior_credit", "mean"),
        popularity_accuracy=("popularity_credit", "mean"),
        accuracy_prior_wrong=("_wrong_correct", "mean"),
        n_prior_wrong=("_wrong", "sum"),
    )
    return out.reset_index()


def dynamics(evals: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per (step, split, layer): n, accuracy, mean gold loss, the baselines, every metric's
    mean and SEM."""
    keys = ["step", "split", "layer"]
    frame = evals.assign(accuracy=evals["correct"].astype(float), loss=evals["gold_loss"])
    summary = stats.group_summary(frame, keys, ["accuracy", "loss", *metrics])
    wide = summary.pivot(index=keys, columns="metric", values=["mean", "sem"])
    wide.columns = [f"{metric}_{stat}" for stat, metric in wide.columns]
    # accuracy is never NaN, so its n is the group's size
    n = summary[summary.metric == "accuracy"].set_index(keys)["n"]
    wide = wide.assign(n=n).reset_index()
    wide = wide.rename(columns={"accuracy_mean": "accuracy", "loss_mean": "loss"})
    wide = wide.merge(baselines(evals, keys), on=keys)
    columns = [*keys, "n", "accuracy", "accuracy_sem", *BASELINES, "loss", "loss_sem"]
    columns += [f"{m}_{stat}" for m in metrics for stat in ("mean", "sem")]
    order = wide["split"].map({s: i for i, s in enumerate(kg.SPLITS)})
    wide = wide.assign(_order=order).sort_values(["step", "layer", "_order"])
    return wide[columns].reset_index(drop=True)


def by_relation(evals: pd.DataFrame) -> pd.DataFrame:
    """The last step's accuracy per split and relation (first probed layer; the answers do
    not depend on the layer), with the baselines: n, accuracy, prior and popularity."""
    last = evals[(evals.step == evals.step.max()) & (evals.layer == evals.layer.iloc[0])]
    keys = ["split", "r"]
    table = last.groupby(keys).agg(n=("correct", "size"), accuracy=("correct", "mean"))
    table = table.reset_index().merge(baselines(last, keys), on=keys)
    table.insert(2, "relation", table["r"].map(kg.relation))
    order = table["split"].map({s: i for i, s in enumerate(kg.SPLITS)})
    return (
        table.assign(_order=order)
        .sort_values(["_order", "n", "r"], ascending=[True, False, True])
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def _rank(scores: np.ndarray, gold: float) -> float:
    """1 + how many score higher than the gold (which is among ``scores``), ties counting half."""
    return 1.0 + float((scores > gold).sum()) + 0.5 * float((scores == gold).sum() - 1)


def rank_summary(ranks: pd.DataFrame) -> pd.DataFrame:
    """Per split: n, filtered MRR and Hits@1/3/10 of the model and of the relation prior."""
    rows = []
    for split in kg.SPLITS:
        part = ranks[ranks.split == split]
        if part.empty:
            continue
        row = {"split": split, "n": len(part)}
        for who, column in (("", "rank"), ("prior_", "prior_rank")):
            row[f"{who}mrr"] = float((1 / part[column]).mean())
            for k in (1, 3, 10):
                row[f"{who}hits{k}"] = float((part[column] <= k).mean())
        rows.append(row)
    return pd.DataFrame(rows)
