"""The one validation of budgets, ranks, rank schedules and allocations, which every configuration class calls.

:func:`check_budget` / :func:`check_budgets` (fractions in (0, 1]), :func:`check_rank` (a whole number in
[0, d]), :func:`check_schedule` (ranks to train at) and :func:`check_allocation` ('uniform' or 'adaptive'). Each
returns the value in its plain form and raises ValueError saying what was wrong and what to give instead;
``what`` names the field in the message. Introduced in notebook 01.
"""
from __future__ import annotations

import numbers

ALLOCATIONS = ("uniform", "adaptive")
BUDGET = "a fraction in (0, 1] (e.g. 0.5 for 50%)"


def _is_budget(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < float(value) <= 1


def check_budget(budget, what: str = "budget", optional: bool = False) -> float | None:
    """``budget`` as a float; ValueError unless it is a number in (0, 1] (or None, when ``optional``)."""
    if optional and budget is None:
        return None
    if not _is_budget(budget):
        raise ValueError(f"{what} must be {BUDGET}{' or None' if optional else ''}, not {budget!r}")
    return float(budget)


def check_budgets(budgets, what: str = "budgets") -> tuple[float, ...]:
    """At least one budget, from a sequence or a comma-separated string such as '0.75,0.5'; floats, in order."""
    if isinstance(budgets, str):
        try:
            budgets = [float(b) for b in budgets.split(",") if b.strip()]
        except ValueError:
            raise ValueError(f"{what} must be comma-separated fractions in (0, 1] such as 0.75,0.5, "
                             f"not {budgets!r}") from None
    if isinstance(budgets, numbers.Number) or not hasattr(budgets, "__iter__"):
        raise ValueError(f"{what} must be a list of budgets such as [0.75, 0.5], not {budgets!r}")
    values = list(budgets)
    if not values:
        raise ValueError(f"{what} is empty: give at least one budget, {BUDGET}")
    bad = [b for b in values if not _is_budget(b)]
    if bad:
        raise ValueError(f"{what} must be fractions in (0, 1] (e.g. 0.5 for 50%); these are not: {bad}")
    return tuple(float(b) for b in values)


def check_rank(rank, head_dim: int | None = None, what: str = "rank") -> int:
    """``rank`` as an int; ValueError unless it is a whole number in [0, head_dim] (>= 0 without head_dim)."""
    limit = ">= 0" if head_dim is None else f"in [0, head_dim={head_dim}]"
    if (isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 0
            or (head_dim is not None and rank > head_dim)):
        raise ValueError(f"{what} must be a whole number {limit}, not {rank!r}")
    return int(rank)


def check_schedule(schedule, head_dim: int | None = None) -> tuple[int, ...]:
    """A rank schedule (the ranks training samples from) as a sorted tuple of ints.

    Raises ValueError naming the problem: not a list, empty, not whole numbers, duplicates, or ranks outside
    [1, head_dim] (only below 1 when ``head_dim`` is None, e.g. in a configuration made before the model).
    """
    if isinstance(schedule, (numbers.Number, str)) or schedule is None:
        raise ValueError(f"a rank schedule is a list of ranks such as [8, 16, 32, 64], not {schedule!r}")
    values = list(schedule)
    if not values:
        raise ValueError("the rank schedule is empty: give at least one rank in [1, head_dim]")
    if any(isinstance(r, bool) or not float(r).is_integer() for r in values):
        raise ValueError(f"rank schedule {values} must hold whole numbers")
    values = [int(r) for r in values]
    bad = [r for r in values if r < 1 or (head_dim is not None and r > head_dim)]
    if bad:
        limit = "head_dim" if head_dim is None else f"head_dim={head_dim}"
        raise ValueError(f"rank schedule has ranks {bad} outside [1, {limit}]")
    if len(set(values)) != len(values):
        raise ValueError(f"rank schedule {values} repeats a rank; list each rank once")
    return tuple(sorted(values))


def check_allocation(allocation, what: str = "allocation") -> str:
    """``allocation``; ValueError unless it is 'uniform' (every rank at the budget) or 'adaptive' (the ranks of
    a greedy-search trajectory)."""
    if allocation not in ALLOCATIONS:
        raise ValueError(f"{what} must be 'uniform' (every rank at the budget) or 'adaptive' (the greedy search's "
                         f"ranks), not {allocation!r}")
    return allocation
