"""Textbook linear-chain CRF for ONE sentence, written from the maths with explicit loops.

Shares nothing with ``chaincrf.crf`` but the parameters: plain Python floats and loops over time
and tags, and brute-force enumeration of every path for tiny inputs (K <= 4, T <= 5).
Transitions are indexed [from, to]. Forbidden moves are ``-inf`` scores.
"""

from __future__ import annotations

import itertools
import math

NEG_INF = float("-inf")


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == NEG_INF:
        return NEG_INF
    return top + math.log(sum(math.exp(v - top) for v in values))


def path_score(emissions, tags, start, trans, end) -> float:
    """Score of one tag path. emissions: T lists of K floats; tags: T ints."""
    if not tags:
        return 0.0
    score = start[tags[0]] + emissions[0][tags[0]]
    for t in range(1, len(tags)):
        score += trans[tags[t - 1]][tags[t]] + emissions[t][tags[t]]
    return score + end[tags[-1]]


def forward_algorithm(emissions, start, trans, end) -> float:
    """Log-partition by the forward algorithm, loops over time and tags."""
    T = len(emissions)
    if T == 0:
        return 0.0
    K = len(start)
    alpha = [start[j] + emissions[0][j] for j in range(K)]
    for t in range(1, T):
        alpha = [
            _logsumexp([alpha[i] + trans[i][j] for i in range(K)]) + emissions[t][j]
            for j in range(K)
        ]
    return _logsumexp([alpha[j] + end[j] for j in range(K)])


def backward_algorithm(emissions, trans, end) -> list[list[float]]:
    """beta[t][i]: log-sum of scores of all continuations from tag i at position t."""
    T = len(emissions)
    K = len(end)
    beta = [[0.0] * K for _ in range(T)]
    beta[T - 1] = list(end)
    for t in range(T - 2, -1, -1):
        beta[t] = [
            _logsumexp([trans[i][j] + emissions[t + 1][j] + beta[t + 1][j] for j in range(K)])
            for i in range(K)
        ]
    return beta


def marginals(emissions, start, trans, end) -> list[list[float]]:
    """Posterior tag probabilities by forward-backward, loops over time and tags."""
    T = len(emissions)
    if T == 0:
        return []
    K = len(start)
    alphas = [[start[j] + emissions[0][j] for j in range(K)]]
    for t in range(1, T):
        alphas.append(
            [
                _logsumexp([alphas[-1][i] + trans[i][j] for i in range(K)]) + emissions[t][j]
                for j in range(K)
            ]
        )
    beta = backward_algorithm(emissions, trans, end)
    log_z = _logsumexp([alphas[T - 1][j] + end[j] for j in range(K)])
    return [[math.exp(alphas[t][j] + beta[t][j] - log_z) for j in range(K)] for t in range(T)]


def viterbi(emissions, start, trans, end) -> tuple[list[int], float]:
    """Best path and its score, loops over time and tags with back-pointers."""
    T = len(emissions)
    if T == 0:
        return [], 0.0
    K = len(start)
    delta = [start[j] + emissions[0][j] for j in range(K)]
    pointers = []
    for t in range(1, T):
        new, ptr = [], []
        for j in range(K):
            best_i = max(range(K), key=lambda i: delta[i] + trans[i][j])
            ptr.append(best_i)
            new.append(delta[best_i] + trans[best_i][j] + emissions[t][j])
        delta = new
        pointers.append(ptr)
    last = max(range(K), key=lambda j: delta[j] + end[j])
    best = delta[last] + end[last]
    path = [last]
    for ptr in reversed(pointers):
        path.append(ptr[path[-1]])
    return path[::-1], best


def log_likelihood(emissions, tags, start, trans, end) -> float:
    return path_score(emissions, tags, start, trans, end) - forward_algorithm(
        emissions, start, trans, end
    )


# ---------------------------------------------------------------- brute force


def all_paths(T: int, K: int):
    return itertools.product(range(K), repeat=T)


def brute_log_partition(emissions, start, trans, end) -> float:
    T, K = len(emissions), len(start)
    if T == 0:
        return 0.0
    return _logsumexp([path_score(emissions, list(p), start, trans, end) for p in all_paths(T, K)])


def brute_kbest(emissions, start, trans, end, k: int) -> list[tuple[list[int], float]]:
    """The k best paths with finite score, best first (ties in any order)."""
    T, K = len(emissions), len(start)
    if T == 0:
        return [([], 0.0)]
    scored = [(list(p), path_score(emissions, list(p), start, trans, end)) for p in all_paths(T, K)]
    scored = [s for s in scored if s[1] != NEG_INF]
    scored.sort(key=lambda s: -s[1])
    return scored[:k]


def brute_marginals(emissions, start, trans, end) -> list[list[float]]:
    T, K = len(emissions), len(start)
    log_z = brute_log_partition(emissions, start, trans, end)
    out = [[0.0] * K for _ in range(T)]
    for p in all_paths(T, K):
        w = math.exp(path_score(emissions, list(p), start, trans, end) - log_z)
        for t, y in enumerate(p):
            out[t][y] += w
    return out


def brute_partial_log_likelihood(emissions, allowed, start, trans, end) -> float:
    """log sum over paths using only allowed tags of p(path). allowed: T lists of K bools."""
    T, K = len(emissions), len(start)
    log_z = brute_log_partition(emissions, start, trans, end)
    if T == 0:
        return 0.0
    scores = [
        path_score(emissions, list(p), start, trans, end)
        for p in all_paths(T, K)
        if all(allowed[t][y] for t, y in enumerate(p))
    ]
    return _logsumexp(scores) - log_z
