"""The knowledge-graph generator's invariants, checked by independent path following."""

from __future__ import annotations

from collections import defaultdict

import pytest

from entrainment_cli.science import kg

# The smallest graph (the demo's) whose splits keep relations with 10 distinct answers.
TINY = kg.KGParams(
    n_entities=1000,
    n_relations=20,
    n_rules=10,
    n_deductible=8,
    n_atomic=2000,
    n_derived=2000,
    num_test=200,
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
    assert 0 < len(ids) <= TINY.num_test
    assert {(q.h, q.r, q.t) for q in ids} <= set(graph.train)
    assert len({(q.h, q.r, q.t) for q in ids}) == len(ids)


@pytest.fixture(scope="module")
def frequency() -> kg.KnowledgeGraph:
    return kg.generate(kg.KGParams(**{**TINY.__dict__, "negatives": "frequency"}), seed=0)


@pytest.mark.parametrize("which", ["graph", "frequency"])
def test_negatives_are_never_true_answers(which, request):
    graph = request.getfixturevalue(which)
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


def _answerers(graph):
    """Independently: per split, the mean credit of the answerer that picks the option most
    often a tail of the query's relation (prior) or a tail at all (popularity) in training,
    an ID query's own fact left out, ties shared."""
    rel, pop = defaultdict(lambda: defaultdict(int)), defaultdict(int)
    for _, r, t in graph.train:
        rel[r][t] += 1
        pop[t] += 1
    out = {}
    for split in kg.SPLITS:
        credits = {"prior": [], "popularity": []}
        for q in graph.split(split):
            own = split == "id"
            for name, counts in (("prior", rel[q.r]), ("popularity", pop)):
                scores = [counts[o] - (own and o == q.t) for o in q.options]
                best = [i for i, v in enumerate(scores) if v == max(scores)]
                credits[name].append(1 / len(best) if q.gold in best else 0.0)
            assert (credits["prior"][-1], credits["popularity"][-1]) == (
                q.prior_credit,
                q.popularity_credit,
            )
        out[split] = {k: (sum(v) / len(v), len(v)) for k, v in credits.items()}
    return out


@pytest.fixture(scope="module")
def uniform() -> kg.KnowledgeGraph:
    return kg.generate(kg.KGParams(**{**TINY.__dict__, "negatives": "uniform"}), seed=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_default_negatives_leave_the_priors_near_chance(graph, seed):
    """Relation prior and popularity within 3 binomial SDs of chance on every split, with
    the default negatives; far above it with upstream's uniform ones."""
    ours = graph if seed == 0 else kg.generate(TINY, seed=seed)
    assert ours.params.negatives == "relation"
    for split, answerers in _answerers(ours).items():
        for name, (acc, n) in answerers.items():
            assert abs(acc - 0.1) <= 3 * (0.1 * 0.9 / n) ** 0.5, (split, name, acc, n)
    uniform = kg.generate(kg.KGParams(**{**TINY.__dict__, "negatives": "uniform"}), seed=seed)
    for split, answerers in _answerers(uniform).items():
        acc, n = answerers["prior"]
        assert acc > 0.1 + 3 * (0.1 * 0.9 / n) ** 0.5 + 0.2, (split, acc)


@pytest.mark.parametrize("seed", [0, 1])
def test_frequency_negatives_leave_a_prior_that_relation_negatives_remove(frequency, seed):
    """Negatives in proportion to the relation's training tail counts (the first proposal):
    less prior than upstream's uniform ones on every split, but the relation-prior answerer
    still far above chance on some split, which is why the default is ``relation``."""
    ours = (
        frequency
        if seed == 0
        else kg.generate(kg.KGParams(**{**TINY.__dict__, "negatives": "frequency"}), seed=seed)
    )
    assert ours.stats["negatives"] == "frequency"
    uniform = kg.generate(kg.KGParams(**{**TINY.__dict__, "negatives": "uniform"}), seed=seed)
    ours_acc, uniform_acc = _answerers(ours), _answerers(uniform)
    above = []
    for split in kg.SPLITS:
        acc, n = ours_acc[split]["prior"]
        assert acc < uniform_acc[split]["prior"][0], split
        above.append(acc - 0.1 > 3 * (0.1 * 0.9 / n) ** 0.5)
    assert any(above)
    rel, _ = kg.tail_counts(ours.train)
    drawn = [o for q in ours.queries for i, o in enumerate(q.options) if i != q.gold]
    # most negatives are tails of the relation in training (uniform fills in only when short)
    assert sum(rel[q.r][o] > 0 for q in ours.queries for o in q.options if o != q.t) > (
        0.8 * len(drawn)
    )


def test_relation_negatives_are_other_answers_of_the_split(graph):
    for split in kg.SPLITS:
        queries = graph.split(split)
        answers = defaultdict(set)
        for q in queries:
            assert (q.r, q.t) not in answers or q.t not in answers[q.r]  # one per answer
            answers[q.r].add(q.t)
        for q in queries:
            assert set(q.options) <= answers[q.r] | _pool_answers(graph, split, q.r)


def _pool_answers(graph, split, r):
    """Answers of relation r in the split before the num_test cut: the facts it may use."""
    if split == "id":
        return {t for _, rr, t in graph.train if rr == r}
    return {t for (_, rr, t), kind in graph.facts.items() if rr == r and kind == "derived"}


def test_max_per_relation_caps_and_stats_record_the_mix():
    capped = kg.generate(kg.KGParams(**{**TINY.__dict__, "max_per_relation": 12}), seed=0)
    for split in kg.SPLITS:
        queries = capped.split(split)
        per_relation = defaultdict(int)
        for q in queries:
            per_relation[kg.relation(q.r)] += 1
        assert max(per_relation.values()) <= 12
        assert capped.stats["relation_mix"][split] == dict(per_relation)
        assert capped.stats["pool_sizes"][split] == len(queries)
    assert capped.stats["max_per_relation"] == 12 and capped.stats["negatives"] == "relation"


def test_derived_facts_feed_preferential_attachment():
    """A closure pass appends each newly derived fact's tail (and head) to the lists new
    entities attach by, as upstream does."""
    g = kg._Graph(3)
    for _ in range(3):
        g.new_entity()
    g.add(0, 0, 1)
    g.add(1, 1, 2)
    before = {k: list(v) for k, v in g.lists.items()}
    rule = kg.Rule(head=2, body=(0, 1), deductible=True)
    g.closure_pass([(0, rule)], __import__("random").Random(0))
    assert g.has(0, 2, 2) and g.derivations[(0, 2, 2)] == {0}
    assert g.lists[2] == [2] and g.lists[2 + 3] == [0]
    assert {k: v for k, v in g.lists.items() if k not in (2, 5)} == before


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


def test_an_unbalanceable_split_falls_back_to_frequency_negatives(graph):
    """The default graph with seed 0 has an OOD-medium pool whose relations have too few
    distinct answers to balance: that split keeps its queries with frequency negatives (it
    used to end the run); the splits that balance are as before."""
    assert graph.stats["split_negatives"] == dict.fromkeys(kg.SPLITS, "relation")
    g = kg.generate(kg.KGParams(), seed=0)
    assert g.stats["split_negatives"] == {
        "id": "relation",
        "ood_medium": "frequency",
        "ood_hard": "relation",
    }
    medium = g.split("ood_medium")
    assert len(medium) == g.stats["pool_available"]["ood_medium"] > 0
    assert all(len(set(q.options)) == 10 and q.options[q.gold] == q.t for q in medium)


def test_text_format():
    assert kg.fact_text(17, 3, 2051) == "Q17 P3 Q2051"
    assert kg.prompt_text(17, 3) == "Q17 P3 "
