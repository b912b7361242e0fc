"""The knowledge-graph generator's invariants, checked by independent path following."""

from __future__ import annotations

from collections import defaultdict

import pytest

from entrainment_cli.science import kg

TINY = kg.KGParams(
    n_entities=500,
    n_relations=12,
    n_rules=8,
    n_deductible=6,
    attach=4,
    n_atomic=500,
    n_derived=500,
    num_test=100,
)


@pytest.fixture(scope="module")
def graph() -> kg.KnowledgeGraph:
    return kg.generate(TINY, seed=0)


def _index(triples) -> dict[int, dict[int, set[int]]]:
    out: dict[int, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for h, r, t in triples:
        out[h][r].add(t)
    return out


def _follow(out, h: int, body) -> set[int]:
    """Every tail reachable from h along the body, one relation at a time."""
    reached = {h}
    for r in body:
        reached = {t for x in reached for t in out[x][r]} if reached else set()
    return reached - {h}


def test_rules_are_acyclic_and_sized(graph):
    assert len(graph.rules) == TINY.n_rules
    assert sum(r.deductible for r in graph.rules) == TINY.n_deductible
    assert all(TINY.min_body <= len(r.body) <= TINY.max_body for r in graph.rules)
    # Kahn's algorithm on head -> body dependencies must consume every relation.
    deps = defaultdict(set)
    for r in graph.rules:
        deps[r.head] |= set(r.body)
    nodes = set(deps) | {b for body in deps.values() for b in body}
    indeg = {n: 0 for n in nodes}
    for body in deps.values():
        for b in body:
            indeg[b] += 1
    ready = [n for n, d in indeg.items() if d == 0]
    seen = 0
    while ready:
        node = ready.pop()
        seen += 1
        for b in deps.get(node, ()):
            indeg[b] -= 1
            if indeg[b] == 0:
                ready.append(b)
    assert seen == len(indeg), "the rule dependencies contain a cycle"


def test_train_set_composition(graph):
    train = set(graph.train)
    assert len(train) == len(graph.train) == TINY.n_atomic + TINY.n_derived
    kinds = [graph.facts[f] for f in graph.train]
    assert kinds.count("atomic") == TINY.n_atomic and kinds.count("derived") == TINY.n_derived
    s = graph.stats
    assert s["facts"] == len(graph.facts) == s["atomic_facts"] + s["derived_facts"]
    assert s["train_atomic"] == TINY.n_atomic and s["train_derived"] == TINY.n_derived
    assert sum(s["rule_length_histogram"].values()) == TINY.n_rules


def test_every_derived_fact_is_derivable_by_its_rules(graph):
    full = _index(graph.facts)
    derived = [f for f in graph.facts if graph.facts[f] == "derived"]
    assert derived and set(derived) == set(graph.derivations)
    for h, r, t in derived:
        rules = graph.derivations[(h, r, t)]
        assert rules
        for i in rules:
            rule = graph.rules[i]
            assert rule.deductible and rule.head == r
            assert t in _follow(full, h, rule.body)


def test_ood_queries_derivable_on_training_graph_at_their_length(graph):
    train = set(graph.train)
    pruned = _index(graph.train)
    deductible = [r for r in graph.rules if r.deductible]
    for split in ("ood_hard", "ood_medium"):
        queries = graph.split(split)
        assert 0 < len(queries) <= TINY.num_test
        assert graph.stats["pool_sizes"][split] == len(queries)
        for q in queries:
            assert (q.h, q.r, q.t) not in train
            assert graph.facts[(q.h, q.r, q.t)] == "derived"
            lengths = [
                len(rule.body)
                for rule in deductible
                if rule.head == q.r and q.t in _follow(pruned, q.h, rule.body)
            ]
            assert lengths and min(lengths) == q.rule_length
            assert (q.rule_length == 2) if split == "ood_hard" else (q.rule_length >= 3)
            alt = set().union(
                *(_follow(pruned, q.h, rule.body) for rule in deductible if rule.head == q.r)
            )
            assert set(q.alt_tails) == alt and q.t in alt


def test_id_queries_are_training_facts(graph):
    ids = graph.split("id")
    assert len(ids) == min(TINY.num_test, len(graph.train))
    assert {(q.h, q.r, q.t) for q in ids} <= set(graph.train)
    assert len({(q.h, q.r, q.t) for q in ids}) == len(ids)


def test_negatives_are_never_true_answers(graph):
    full = _index(graph.facts)
    pruned = _index(graph.train)
    deductible = [r for r in graph.rules if r.deductible]
    for q in graph.queries:
        assert len(q.options) == TINY.n_options == len(set(q.options))
        assert q.options[q.gold] == q.t
        true = set(full[q.h][q.r]) | set(pruned[q.h][q.r])
        for rule in deductible:
            if rule.head == q.r:
                true |= _follow(pruned, q.h, rule.body)
        negatives = set(q.options) - {q.t}
        assert not negatives & true, (q, negatives & true)
        assert all(0 <= o < graph.stats["entities"] for o in q.options)
    # the gold answer is not always in the same place
    assert len({q.gold for q in graph.queries}) > 1


def test_determinism_under_seed(graph):
    again = kg.generate(TINY, seed=0)
    assert again.rules == graph.rules and again.facts == graph.facts
    assert again.train == graph.train and again.queries == graph.queries
    other = kg.generate(TINY, seed=2)
    assert other.train != graph.train


def test_too_small_names_the_parameter():
    with pytest.raises(kg.GraphTooSmall) as e:
        kg.generate(kg.KGParams(n_entities=200), seed=0)
    assert e.value.raise_param == "n_entities" and e.value.have > 200
    with pytest.raises(kg.GraphTooSmall) as e:
        kg.generate(kg.KGParams(**{**TINY.__dict__, "n_atomic": 10**6}), seed=0)
    assert (e.value.what, e.value.raise_param, e.value.lower_param) == (
        "atomic facts",
        "n_entities",
        "n_atomic",
    )


def test_text_format():
    assert kg.fact_text(17, 3, 2051) == "Q17 P3 Q2051"
    assert kg.prompt_text(17, 3) == "Q17 P3 "
