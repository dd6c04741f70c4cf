"""Hybrid Dilated Convolution checks (Wang et al. 2018, "Understanding Convolution for Semantic Segmentation").

HDC gives three rules for a stack of k x k convolutions at rates r_1..r_n on one feature grid:

1. the maximum distance between two non-zero taps, ``M_i = max(M_{i+1} - 2 r_i, 2 r_i - M_{i+1}, r_i)``
   with ``M_n = r_n``, must satisfy ``M_2 <= K``, so that the first layer's dense window fills the gaps
   left by the others;
2. the rates of a group have no common factor above 1 (2, 4, 8 only ever reach even offsets);
3. repeated groups form a sawtooth (1, 2, 5, 1, 2, 5): rates rise within a group, and a dilated rate is
   never repeated in consecutive layers (2, 2, 2 stacks the same holes).

A stack is split into groups where the rate drops, and rules 1 and 2 are checked per group: applied to the
whole of 1, 2, 5, 1, 2, 5 the recursion gives M_2 = 5 although that stack has no hole. The rules are the
paper's design heuristics; the coverage count (``seg.analysis.coverage``) is the exact answer, and both are
reported.
"""

from __future__ import annotations

import itertools
import math
from typing import Dict, List, Sequence, Tuple

from seg.analysis.coverage import coverage_profile, receptive_field
from seg.analysis.layers import Layer

# Suggestions tile a rising group of at most this many rates (as the paper's 1, 2, 5 and 1, 2, 5, 9).
MAX_GROUP = 4


def max_tap_distances(rates: Sequence[int]) -> List[int]:
    """``[M_1, ..., M_n]`` of the HDC recursion, computed from the last layer backwards."""
    distances = [rates[-1]]
    for rate in reversed(rates[:-1]):
        following = distances[0]
        distances.insert(0, max(following - 2 * rate, 2 * rate - following, rate))
    return distances


def rate_groups(rates: Sequence[int]) -> List[List[int]]:
    """Split rates into groups wherever the rate drops: 1, 2, 5, 1, 2, 5 -> [1, 2, 5], [1, 2, 5]."""
    groups = [[rates[0]]]
    for previous, rate in zip(rates, rates[1:]):
        if rate < previous:
            groups.append([rate])
        else:
            groups[-1].append(rate)
    return groups


def _rates_text(rates: Sequence[int]) -> str:
    return ", ".join(str(r) for r in rates)


def _distance_failures(groups: List[List[int]], kernel: int) -> List[Tuple[List[int], int]]:
    """(group, M_2) for every group of two or more rates with M_2 > K."""
    return [(group, m2) for group in groups
            if len(group) > 1 and (m2 := max_tap_distances(group)[1]) > kernel]


def _common_factors(groups: List[List[int]]) -> List[Tuple[List[int], int]]:
    return [(group, math.gcd(*group)) for group in groups if math.gcd(*group) > 1]


def _repeated_rates(rates: Sequence[int]) -> List[int]:
    return sorted({rate for previous, rate in zip(rates, rates[1:]) if rate == previous > 1})


def _stack(rates: Sequence[int], kernel: int) -> List[Layer]:
    return [Layer(kernel, rate) for rate in rates]


def _has_holes(rates: Sequence[int], kernel: int) -> bool:
    return any(count == 0 for count in coverage_profile(_stack(rates, kernel)))


def _passes(rates: Sequence[int], kernel: int) -> bool:
    groups = rate_groups(rates)
    return not (_repeated_rates(rates) or _common_factors(groups) or _distance_failures(groups, kernel)
                or _has_holes(rates, kernel))


def _checks(rates: Sequence[int], kernel: int) -> Dict[str, Dict]:
    """Each rule as ``{"ok": bool, "detail": text}``."""
    groups = rate_groups(rates)
    distance = _distance_failures(groups, kernel)
    factors = _common_factors(groups)
    repeated = _repeated_rates(rates)
    return {
        "max_distance": {
            "ok": not distance,
            "detail": "; ".join(f"M_2 = {m2} > K = {kernel} for group {_rates_text(group)}: the first layer's "
                                f"{kernel}-tap window cannot fill the gaps of the following rates"
                                for group, m2 in distance)
            or "; ".join(f"M_2 = {max_tap_distances(group)[1]} <= K = {kernel} for group {_rates_text(group)}"
                         for group in groups if len(group) > 1)
            or "no group of two or more rates"},
        "common_factor": {
            "ok": not factors,
            "detail": "; ".join(f"group {_rates_text(group)} has the common factor {factor}: it only reaches "
                                f"offsets that are multiples of {factor} on its input grid"
                                for group, factor in factors)
            or "no common factor above 1 within a group"},
        "sawtooth": {
            "ok": not repeated,
            "detail": f"rate {_rates_text(repeated)} repeats in consecutive layers: equal rates stack the same "
                      f"holes; use a rising group such as 1, 2, 5 and repeat it (sawtooth)" if repeated
            else "no dilated rate repeats in consecutive layers"},
    }


def check_hdc(rates: Sequence[int], kernel: int = 3, suggestions: int = 3) -> Dict:
    """The three HDC rules for stride-1 ``kernel`` x ``kernel`` layers at ``rates``, plus the exact hole test.

    ``ok`` needs every rule to pass and no hole; otherwise up to ``suggestions`` fixed rate sequences are
    proposed (see ``suggest_rates``).
    """
    rates = [int(r) for r in rates]
    if not rates or any(r < 1 for r in rates):
        raise ValueError(f"rates must be a non-empty list of positive integers, got {rates}")
    checks = _checks(rates, kernel)
    holes = _has_holes(rates, kernel)
    ok = all(c["ok"] for c in checks.values()) and not holes
    return {
        "kernel": kernel,
        "rates": rates,
        "groups": rate_groups(rates),
        "max_distances": [max_tap_distances(group) for group in rate_groups(rates)],
        "checks": checks,
        "has_holes": holes,
        "ok": ok,
        "suggestions": [] if ok else suggest_rates(rates, kernel, suggestions),
    }


def suggest_rates(rates: Sequence[int], kernel: int = 3, count: int = 3) -> List[Dict]:
    """Rate sequences of the same length that pass every check, closest in receptive field first.

    Candidates repeat a non-decreasing group of 1 to ``MAX_GROUP`` rates (a sawtooth), with rates up to
    ``min(sum(rates), 2 * max(rates) + kernel)``: larger rates cannot keep a similar receptive field. Ties in
    receptive-field distance go to the larger field, then to the smaller largest rate (the most even
    spread). For 2, 2, 2 (field 13) this gives 1, 2, 3 (13) first.
    """
    n = len(rates)
    target = receptive_field(_stack(rates, kernel))
    largest = min(sum(rates), 2 * max(rates) + kernel)
    candidates = set()
    for group_size in range(1, min(n, MAX_GROUP) + 1):
        for group in itertools.combinations_with_replacement(range(1, largest + 1), group_size):
            candidates.add(tuple(group[i % group_size] for i in range(n)))

    def field(candidate):  # receptive_field() of a stride-1 stack, without building its layers
        return 1 + (kernel - 1) * sum(candidate)

    def rank(candidate):
        return abs(field(candidate) - target), -field(candidate), max(candidate), candidate

    found = []
    for candidate in sorted(candidates, key=rank):
        if len(found) == count:
            break
        if _passes(candidate, kernel):
            found.append({"rates": list(candidate), "receptive_field": field(candidate)})
    return found
