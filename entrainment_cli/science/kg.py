"""A synthetic knowledge graph whose facts follow latent deduction rules (spec 2.2-2.3).

Why: to tell in-distribution recall from out-of-distribution deduction, the facts must come
from rules we know. The graph grows by preferential attachment along relation co-occurrence;
rules ``h -r1-> x1 -r2-> ... -rL-> t  =>  h -r0-> t`` derive more facts; a model trains on
atomic and derived facts and is tested on held-out facts that only a 2-step (OOD-hard) or a
3+-step (OOD-medium) rule explains on the training graph.

Pure and seeded: no I/O, no torch; every draw comes from one ``random.Random(seed)`` over
sorted collections, so a seed fixes the graph whatever the rest of the program does.

Upstream bugs fixed here (spec 7.2): a rejected cyclic rule is discarded whole instead of
undoing edges another rule may share (item 3); each new node samples its first edge too
(item 2); multiple-choice negatives exclude every true answer of the query, for ID queries
too (item 5), and are distinct. The closure is one pass per check as upstream, plus a
final pass on the whole graph.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field

Triple = tuple[int, int, int]  # (head entity, relation, tail entity)
SPLITS = ("id", "ood_medium", "ood_hard")


class GraphTooSmall(ValueError):
    """A count fell short of what the requested sizes need.

    ``raise_param`` / ``lower_param`` name the :class:`KGParams` fields that fix it, so the
    caller can translate them into its own option names.
    """

    def __init__(self, what: str, have: int, need: int, raise_param: str, lower_param: str = ""):
        self.what, self.have, self.need = what, have, need
        self.raise_param, self.lower_param = raise_param, lower_param
        fix = f"raise {raise_param}" + (f" or lower {lower_param}" if lower_param else "")
        super().__init__(f"{what}: {have}, need {need}; {fix}")


@dataclass(frozen=True)
class KGParams:
    """Sizes, with the upstream experiment's values as defaults (spec 2.1)."""

    n_entities: int = 4000
    n_relations: int = 50
    n_rules: int = 25  # upstream: max(n_relations // min_body, 20) = 25
    n_deductible: int = 20
    min_body: int = 2
    max_body: int = 5
    attach: int = 6  # edges per new entity (m)
    temperature: float = 0.25  # rule weight floor(100 exp(-T (L + 1)))
    check_every: int = 100  # closure pass every this many new entities
    n_atomic: int = 5000  # training atomic facts
    n_derived: int = 5000  # training derived facts
    num_test: int = 1000  # cap of each test pool
    n_options: int = 10  # multiple-choice options per query (gold + negatives)


@dataclass(frozen=True)
class Rule:
    head: int
    body: tuple[int, ...]
    deductible: bool


@dataclass(frozen=True)
class Query:
    """One test fact: the prompt is (h, r), the gold answer t, ``options[gold]`` == t."""

    split: str
    h: int
    r: int
    t: int
    rule_length: int  # shortest deductible rule deriving it on the training graph; 0 for ID
    kind: str  # atomic | derived (of the fact in the full graph)
    alt_tails: tuple[int, ...]  # every tail rule-derivable from (h, r) on the training graph
    options: tuple[int, ...]
    gold: int


@dataclass
class KnowledgeGraph:
    params: KGParams
    seed: int
    rules: list[Rule]
    facts: dict[Triple, str]  # every fact of the full graph -> atomic | derived
    derivations: dict[Triple, tuple[int, ...]]  # derived fact -> indices of rules deriving it
    train: list[Triple]
    queries: list[Query]
    stats: dict = field(default_factory=dict)

    def split(self, name: str) -> list[Query]:
        return [q for q in self.queries if q.split == name]


# -- rules -----------------------------------------------------------------------------------


def _reaches(deps: dict[int, set[int]], start: int, goal: int) -> bool:
    stack, seen = [start], set()
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            stack.extend(sorted(deps.get(node, ())))
    return False


def generate_rules(p: KGParams, rng: random.Random) -> list[Rule]:
    """``n_rules`` rules with acyclic head->body dependencies; ``n_deductible`` of them derive."""
    deps: dict[int, set[int]] = {}
    drawn: list[tuple[int, tuple[int, ...]]] = []
    tries = 0
    while len(drawn) < p.n_rules:
        tries += 1
        if tries > 1000 * p.n_rules:
            raise GraphTooSmall(
                "acyclic rules found", len(drawn), p.n_rules, "n_relations", "n_rules"
            )
        length = rng.randint(p.min_body, p.max_body)
        rels = [rng.randrange(p.n_relations) for _ in range(length + 1)]
        head, body = rels[0], tuple(rels[1:])
        # A rule is cyclic if its head is in its body or some body relation already depends
        # on the head; such a rule is dropped whole, leaving ``deps`` untouched.
        if any(_reaches(deps, b, head) for b in set(body)):
            continue
        deps.setdefault(head, set()).update(body)
        drawn.append((head, body))
    chosen = set(rng.sample(range(p.n_rules), p.n_deductible))
    return [Rule(h, b, i in chosen) for i, (h, b) in enumerate(drawn)]


# -- growth ----------------------------------------------------------------------------------


class _Graph:
    """Facts as ``out[h][r] = {t}``, plus preferential-attachment lists per relation token.

    Token ``r`` (< R) lists entities with an incoming r, token ``r + R`` those with an
    outgoing r; with duplicates, so popular entities are drawn more often.
    """

    def __init__(self, n_relations: int):
        self.R = n_relations
        self.out: list[dict[int, set[int]]] = []
        self.lists: dict[int, list[int]] = {}
        self.derivations: dict[Triple, set[int]] = {}

    def new_entity(self) -> int:
        self.out.append({})
        return len(self.out) - 1

    def has(self, h: int, r: int, t: int) -> bool:
        return t in self.out[h].get(r, ())

    def add(self, h: int, r: int, t: int, attach: bool = True) -> None:
        self.out[h].setdefault(r, set()).add(t)
        if attach:
            self.lists.setdefault(r, []).append(t)
            self.lists.setdefault(r + self.R, []).append(h)

    def reach(self, h: int, body: tuple[int, ...]) -> set[int]:
        frontier = {h}
        for r in body:
            frontier = {t for x in frontier for t in self.out[x].get(r, ())}
            if not frontier:
                break
        return frontier

    def closure_pass(self, rules: list[tuple[int, Rule]], rng: random.Random) -> None:
        """Every deductible rule from every entity, adding derived facts at once (so one can
        feed a later derivation in the same pass), recording which rules derive each."""
        order = list(range(len(self.out)))
        rng.shuffle(order)
        for h in order:
            for index, rule in rules:
                if rule.body[0] not in self.out[h]:
                    continue
                for t in sorted(self.reach(h, rule.body)):
                    if t == h:
                        continue
                    self.derivations.setdefault((h, rule.head, t), set()).add(index)
                    if not self.has(h, rule.head, t):
                        self.add(h, rule.head, t, attach=False)

    def triples(self) -> list[Triple]:
        return sorted(
            (h, r, t) for h, rel in enumerate(self.out) for r, ts in rel.items() for t in ts
        )


def _adjacency(rules: list[Rule], p: KGParams, rng: random.Random) -> dict[int, list[int]]:
    """Relation-token co-occurrence, weighted toward short rules (spec 2.3 steps 3-4)."""
    R = p.n_relations
    weighted = []
    for rule in rules:
        weighted += [rule] * math.floor(100 * math.exp(-p.temperature * (len(rule.body) + 1)))
    rng.shuffle(weighted)
    adj: dict[int, list[int]] = {}

    def pair(a: int, b: int) -> None:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)

    for rule in weighted:
        r0, body = rule.head, rule.body
        pair(r0, body[0])  # the source has outgoing r0 and r1
        for i in range(len(body) - 1):
            pair(body[i] + R, body[i + 1])  # x_i has incoming r_i and outgoing r_{i+1}
        pair(body[-1] + R, r0 + R)  # the end has incoming rL and incoming r0
    return adj


def _grow(rules: list[Rule], p: KGParams, rng: random.Random) -> _Graph:
    R = p.n_relations
    g = _Graph(R)
    child = sorted(
        {r for rule in rules for r in rule.body} | {r + R for rule in rules for r in rule.body}
    )
    child_set = set(child)
    adj = _adjacency(rules, p, rng)
    deductible = [(i, rule) for i, rule in enumerate(rules) if rule.deductible]

    # Seed graph: each pass instantiates every rule once on fresh entities, until every child
    # token lists at least ``attach`` distinct entities.
    while any(len(set(g.lists.get(tok, ()))) < p.attach for tok in child):
        for rule in rules:
            source = node = g.new_entity()
            for r in rule.body:
                nxt = g.new_entity()
                g.add(node, r, nxt)
                node = nxt
            g.add(source, rule.head, node)
        if len(g.out) > p.n_entities:
            raise GraphTooSmall(
                "entities of the seed graph", len(g.out), p.n_entities, "n_entities", "n_rules"
            )

    start = sorted(tok for tok in adj if tok in child_set)
    since_check = 0
    while len(g.out) < p.n_entities:
        k = g.new_entity()
        chosen: set[tuple[int, int]] = set()
        candidates = start
        for _ in range(p.attach):
            for _try in range(100):
                tok = rng.choice(candidates)
                t = rng.choice(g.lists[tok])
                if t != k and (tok, t) not in chosen:
                    break
            else:
                break
            chosen.add((tok, t))
            if tok < R:
                g.add(k, tok, t)
            else:
                g.add(t, tok - R, k)
            candidates = [c for c in adj.get(tok, ()) if c in child_set] or start
        since_check += 1
        if since_check == p.check_every:
            g.closure_pass(deductible, rng)
            since_check = 0
    return g


# -- splits ----------------------------------------------------------------------------------


def _shortest_rule(g: _Graph, rules: list[Rule], fact: Triple) -> tuple[int, set[int]]:
    """(shortest body length of a deductible rule deriving ``fact`` on ``g`` (0: none),
    every tail those rules derive from the fact's head)."""
    h, r, t = fact
    best, tails = 0, set()
    for rule in rules:
        if rule.deductible and rule.head == r:
            reached = g.reach(h, rule.body) - {h}
            tails |= reached
            if t in reached and (best == 0 or len(rule.body) < best):
                best = len(rule.body)
    return best, tails


def _options(
    rng: random.Random, gold: int, n_entities: int, true_tails: set[int], n: int
) -> tuple[tuple[int, ...], int]:
    """Gold plus ``n - 1`` distinct negatives that are no true answer, shuffled."""
    negatives: set[int] = set()
    while len(negatives) < n - 1:
        c = rng.randrange(n_entities)
        if c != gold and c not in true_tails:
            negatives.add(c)
    options = [gold, *sorted(negatives)]
    rng.shuffle(options)
    return tuple(options), options.index(gold)


def generate(params: KGParams | None = None, seed: int = 0) -> KnowledgeGraph:
    """Rules, graph, closure, train set and the ID / OOD-medium / OOD-hard test queries."""
    p = params or KGParams()
    if p.n_deductible > p.n_rules:
        raise GraphTooSmall("rules", p.n_rules, p.n_deductible, "n_rules", "n_deductible")
    rng = random.Random(seed)
    rules = generate_rules(p, rng)
    g = _grow(rules, p, rng)
    g.closure_pass(  # the last pass, over the whole graph
        [(i, r) for i, r in enumerate(rules) if r.deductible], rng
    )

    facts_sorted = g.triples()
    facts = {f: ("derived" if f in g.derivations else "atomic") for f in facts_sorted}
    atomic = [f for f in facts_sorted if facts[f] == "atomic"]
    derived = [f for f in facts_sorted if facts[f] == "derived"]
    rng.shuffle(atomic)
    rng.shuffle(derived)
    if len(atomic) < p.n_atomic:
        raise GraphTooSmall("atomic facts", len(atomic), p.n_atomic, "n_entities", "n_atomic")
    if len(derived) <= p.n_derived:
        raise GraphTooSmall(
            "derived facts (training plus at least one held out)",
            len(derived),
            p.n_derived + 1,
            "n_entities",
            "n_derived",
        )
    train = atomic[: p.n_atomic] + derived[: p.n_derived]
    rng.shuffle(train)

    pruned = _Graph(p.n_relations)
    for _ in range(len(g.out)):
        pruned.new_entity()
    for h, r, t in train:
        pruned.add(h, r, t, attach=False)

    pools: dict[str, list[tuple[Triple, int, set[int]]]] = {"ood_hard": [], "ood_medium": []}
    for fact in derived[p.n_derived :]:
        length, tails = _shortest_rule(pruned, rules, fact)
        if length:
            pools["ood_hard" if length <= 2 else "ood_medium"].append((fact, length, tails))
    available = {name: len(pool) for name, pool in pools.items()}
    for name, pool in pools.items():
        if not pool:
            raise GraphTooSmall(
                f"held-out facts for {name} (rule length {'2' if name == 'ood_hard' else '3+'})",
                0,
                1,
                "n_derived",  # more training facts: more held-out facts derivable from them
            )
        rng.shuffle(pool)
        del pool[p.num_test :]
    id_facts = rng.sample(train, min(p.num_test, len(train)))
    pools["id"] = [(f, 0, set()) for f in id_facts]

    queries = []
    for name in SPLITS:
        for (h, r, t), length, alt in pools[name]:
            true = set(g.out[h].get(r, ())) | alt  # the training facts are among g's
            if name == "id":
                true |= _shortest_rule(pruned, rules, (h, r, t))[1]
            options, gold = _options(rng, t, len(g.out), true - {t}, p.n_options)
            queries.append(
                Query(name, h, r, t, length, facts[(h, r, t)], tuple(sorted(alt)), options, gold)
            )
    kg = KnowledgeGraph(
        params=p,
        seed=seed,
        rules=rules,
        facts=facts,
        derivations={f: tuple(sorted(v)) for f, v in g.derivations.items()},
        train=train,
        queries=queries,
    )
    kg.stats = _stats(kg, len(g.out), available)
    return kg


def _stats(kg: KnowledgeGraph, n_entities: int, available: dict[str, int]) -> dict:
    kinds = Counter(kg.facts.values())
    train_kinds = Counter(kg.facts[f] for f in kg.train)
    return {
        "seed": kg.seed,
        "entities": n_entities,
        "relations": kg.params.n_relations,
        "rules": len(kg.rules),
        "deductible_rules": sum(r.deductible for r in kg.rules),
        "rule_length_histogram": dict(sorted(Counter(len(r.body) for r in kg.rules).items())),
        "deductible_rule_length_histogram": dict(
            sorted(Counter(len(r.body) for r in kg.rules if r.deductible).items())
        ),
        "facts": len(kg.facts),
        "atomic_facts": kinds["atomic"],
        "derived_facts": kinds["derived"],
        "train": len(kg.train),
        "train_atomic": train_kinds["atomic"],
        "train_derived": train_kinds["derived"],
        "held_out_derived": kinds["derived"] - train_kinds["derived"],
        "pool_available": available,
        "pool_sizes": {s: len(kg.split(s)) for s in SPLITS},
        "query_rule_length_histogram": {
            s: dict(sorted(Counter(q.rule_length for q in kg.split(s)).items())) for s in SPLITS
        },
    }


def entity(i: int) -> str:
    return f"Q{i}"


def relation(r: int) -> str:
    return f"P{r}"


def fact_text(h: int, r: int, t: int) -> str:
    """A training line without its end-of-sequence token: ``Q17 P3 Q2051``."""
    return f"{entity(h)} {relation(r)} {entity(t)}"


def prompt_text(h: int, r: int) -> str:
    """A query's prompt; its trailing space is the position that predicts the answer."""
    return f"{entity(h)} {relation(r)} "
