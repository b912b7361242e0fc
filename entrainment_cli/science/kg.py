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
final pass on the whole graph; as upstream, the facts it derives feed preferential attachment.

Negatives (DESIGN.md, "Knowledge-graph test design"): gold tails are popular entities, so
upstream's uniform negatives let a model-free answerer that knows only which entities are
frequent tails of the relation win most queries. By default a split asks each (relation,
answer) once and a query's negatives are other answers of its relation in the split, each
about as often a negative as 9 times its being the answer, so that answerer (and the
global-popularity one) is near chance; both are recorded per query.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field

Triple = tuple[int, int, int]  # (head entity, relation, tail entity)
SPLITS = ("id", "ood_medium", "ood_hard")
NEGATIVES = ("relation", "frequency", "uniform")


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
    negatives: str = "relation"  # relation: other answers of the relation (see NEGATIVES)
    max_per_relation: int = 0  # cap of queries of one relation in each split; 0: none


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
    # Model-free answerers on these options (1 / ties when the gold is among the best, else 0),
    # counting training facts with the query's own fact left out: the option most often a
    # tail of the query's relation (prior), the option most often a tail at all (popularity).
    prior_credit: float
    popularity_credit: float


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
        feed a later derivation in the same pass) and, as upstream, to the attachment lists,
        recording which rules derive each."""
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
                        self.add(h, rule.head, t)

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


def _uniform_negatives(
    rng: random.Random, gold: int, n_entities: int, excluded: set[int], n: int
) -> list[int]:
    """Upstream's design: ``n - 1`` distinct entities drawn uniformly, no true answer."""
    negatives: set[int] = set()
    while len(negatives) < n - 1:
        c = rng.randrange(n_entities)
        if c != gold and c not in excluded:
            negatives.add(c)
    return sorted(negatives)


def _frequency_negatives(
    rng: random.Random, gold: int, counts: Counter, n_entities: int, excluded: set[int], n: int
) -> list[int]:
    """The first proposal (DESIGN.md): ``n - 1`` distinct entities drawn in proportion to how
    often each is a tail of the query's relation in training, no true answer; uniform ones
    fill up when the relation has too few other tails. Kept to show what it leaves: the
    relation prior still well above chance, because a split's golds are hubs that are rarely
    eligible negatives (README, pretrain)."""
    pool = sorted(e for e, c in counts.items() if c > 0 and e != gold and e not in excluded)
    weights = [counts[e] for e in pool]
    negatives: list[int] = []
    while len(negatives) < n - 1 and pool:
        i = rng.choices(range(len(pool)), weights)[0]
        negatives.append(pool.pop(i))
        weights.pop(i)
    rest = _uniform_negatives(rng, gold, n_entities, excluded | set(negatives), n - len(negatives))
    return sorted(negatives + rest)


def _balanced_negatives(
    rng: random.Random, golds: list[int], trues: list[set[int]], n: int
) -> dict[int, list[int]]:
    """Negatives for the queries of one relation in one split, each gold of which is distinct:
    query index -> ``n - 1`` other golds that are no true answer of it.

    Each gold should be a negative ``n - 1`` times, so that it is the answer in 1 of the about
    ``n`` queries it appears in. Negatives go query by query, the golds with the least slack
    (uses still wanted over queries left where they are eligible) first, ties at random. A
    query is dropped (and the rest redone) when it has fewer than ``n - 1`` eligible golds or
    its gold ends up a negative fewer than ``2 (n - 1) / 3`` times: a gold that is a true
    answer of most heads (a hub) would otherwise be told apart by how rarely it is wrong.
    """
    need = n - 1
    alive = set(range(len(golds)))
    while alive:
        answers = sorted(golds[i] for i in alive)
        eligible = {i: [a for a in answers if a != golds[i] and a not in trues[i]] for i in alive}
        slots = Counter(a for i in alive for a in eligible[i])
        short = {i for i in alive if len(eligible[i]) < need or slots[golds[i]] < need}
        if short:
            alive -= short
            continue
        remaining, used, chosen = slots, Counter(), {}
        for i in sorted(alive):
            ranked = sorted(
                eligible[i], key=lambda a: ((used[a] - need) / remaining[a], rng.random())
            )
            chosen[i] = ranked[:need]
            used.update(chosen[i])
            remaining.subtract(eligible[i])
        rare = {i for i in alive if used[golds[i]] < 2 * need // 3}
        if not rare:
            return chosen
        alive -= rare
    return {}


def _one_per_answer(pool: list) -> list:
    """The first query of each (relation, answer) of a shuffled pool.

    Why (with :func:`_balanced_negatives`): every gold of a relation in a split is then one
    option of about ``n_options`` queries, once as the gold, so no answerer that scores an
    (entity, relation) without the head (relation prior, popularity) can beat chance. With
    upstream's uniform negatives the relation's frequent tails win 0.7-0.9 of queries; drawing
    negatives by the relation's training tail counts still left 0.15-0.52 on the demo graph,
    because a split's golds concentrate on a few hubs more than distinct negatives can.
    """
    seen: set[tuple[int, int]] = set()
    unique = []
    for item in pool:
        _, r, t = item[0]
        if (r, t) not in seen:
            seen.add((r, t))
            unique.append(item)
    return unique


def _credit(scores: list[int], gold: int) -> float:
    """An answerer that picks the highest score, ties broken at random: P(it picks the gold)."""
    best = max(scores)
    winners = sum(s == best for s in scores)
    return 1.0 / winners if scores[gold] == best else 0.0


def _capped(pool: list, p: KGParams) -> list:
    """The first ``num_test`` items of a shuffled pool, at most ``max_per_relation`` of each
    relation (0: no cap), so that one frequent relation cannot make up a split. An item is a
    ((fact, rule length, alt tails), negatives) pair."""
    taken: Counter = Counter()
    kept = []
    for item in pool:
        fact = item[0][0]
        if p.max_per_relation and taken[fact[1]] >= p.max_per_relation:
            continue
        taken[fact[1]] += 1
        kept.append(item)
        if len(kept) == p.num_test:
            break
    return kept


def generate(params: KGParams | None = None, seed: int = 0) -> KnowledgeGraph:
    """Rules, graph, closure, train set and the ID / OOD-medium / OOD-hard test queries."""
    p = params or KGParams()
    if p.n_deductible > p.n_rules:
        raise GraphTooSmall("rules", p.n_rules, p.n_deductible, "n_rules", "n_deductible")
    if p.negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, not {p.negatives!r}")
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
            lengths = "2" if name == "ood_hard" else "3+"
            fits = [r for r in rules if (len(r.body) == 2) == (name == "ood_hard")]
            if not any(r.deductible for r in fits):
                # no rule derives this split's facts: make one that exists deductible, or
                # draw more rules
                raise GraphTooSmall(
                    f"deductible rules of length {lengths} (for {name})",
                    0,
                    1,
                    "n_deductible" if fits else "n_rules",
                )
            raise GraphTooSmall(
                f"held-out facts for {name} (rule length {lengths})",
                0,
                1,
                "n_derived",  # more training facts: more held-out facts derivable from them
            )
        rng.shuffle(pool)
    pools["id"] = [(f, 0, set()) for f in rng.sample(train, len(train))]

    by_relation, popularity = tail_counts(train)

    def true_tails(name: str, fact: Triple, alt: set[int]) -> set[int]:
        h, r, t = fact
        true = set(g.out[h].get(r, ())) | alt  # the training facts are among g's
        if name == "id":
            true |= _shortest_rule(pruned, rules, fact)[1]
        return true - {t}

    queries = []
    split_negatives = {}
    for name in SPLITS:
        pool = pools[name]
        split_negatives[name] = p.negatives
        if p.negatives == "relation":
            # Balanced on the whole pool, then a random subset: each gold stays a negative
            # about n_options - 1 times as often as it is the answer.
            pool = _one_per_answer(pool)
            negatives: dict[int, list[int]] = {}
            for r in sorted({fact[1] for fact, *_ in pool}):
                index = [i for i, (fact, *_) in enumerate(pool) if fact[1] == r]
                picked = _balanced_negatives(
                    rng,
                    [pool[i][0][2] for i in index],
                    [true_tails(name, pool[i][0], pool[i][2]) for i in index],
                    p.n_options,
                )
                negatives |= {index[k]: v for k, v in picked.items()}
            pairs = [(item, negatives[i]) for i, item in enumerate(pool) if i in negatives]
            # the first fact of each answer comes early for a frequent answer: reshuffle
            rng.shuffle(pairs)
            if not pairs:
                # No relation of the split has enough distinct answers to balance (a small
                # OOD pool on a few hubs): the split keeps its queries with frequency
                # negatives rather than vanish; stats' split_negatives records it and the
                # relation-prior baseline beside its accuracy shows what that leaves.
                split_negatives[name] = "frequency"
                pairs = [(item, None) for item in pools[name]]
        else:
            pairs = [(item, None) for item in pool]
        chosen = _capped(pairs, p)
        if not chosen:
            raise GraphTooSmall(f"queries of {name}", 0, 1, "n_entities")
        for ((h, r, t), length, alt), negs in chosen:
            if negs is None:
                true = true_tails(name, (h, r, t), alt)
                if split_negatives[name] == "frequency":
                    counts = by_relation.get(r, Counter())
                    negs = _frequency_negatives(rng, t, counts, len(g.out), true, p.n_options)
                else:
                    negs = _uniform_negatives(rng, t, len(g.out), true, p.n_options)
            options = [t, *negs]
            rng.shuffle(options)
            gold = options.index(t)
            own = int(name == "id")  # an ID query's own fact is left out of the counts
            prior = [by_relation.get(r, Counter())[o] - own * (o == t) for o in options]
            popular = [popularity[o] - own * (o == t) for o in options]
            queries.append(
                Query(
                    name,
                    h,
                    r,
                    t,
                    length,
                    facts[(h, r, t)],
                    tuple(sorted(alt)),
                    tuple(options),
                    gold,
                    _credit(prior, gold),
                    _credit(popular, gold),
                )
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
    kg.stats["split_negatives"] = split_negatives
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
        "negatives": kg.params.negatives,
        "max_per_relation": kg.params.max_per_relation,
        "relation_mix": {
            s: {relation(r): n for r, n in Counter(q.r for q in kg.split(s)).most_common()}
            for s in SPLITS
        },
        "query_rule_length_histogram": {
            s: dict(sorted(Counter(q.rule_length for q in kg.split(s)).items())) for s in SPLITS
        },
    }


def tail_counts(train: list[Triple]) -> tuple[dict[int, Counter], Counter]:
    """How often each entity is a tail in the training facts: per relation (what the relation
    prior answers by) and overall (popularity)."""
    by_relation: dict[int, Counter] = {}
    for _, r, t in train:
        by_relation.setdefault(r, Counter())[t] += 1
    return by_relation, Counter(t for _, _, t in train)


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
