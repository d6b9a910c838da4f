"""Reward functions for GRPO groups, in trl's convention:

    fn(prompts, completions, completion_ids, **kwargs) -> list[float | None]

One call scores a whole batch of completions (users × group members, member order = rank in
the group). ``prompts`` are the histories (item-id lists), ``completions`` the generated item
ids (0 = no valid item), ``completion_ids`` their codes; keyword arguments carry the group's
facts, one value per completion unless noted:

  target         the true next item             target_codes  its codes
  rank           the member's rank in its group (0 = first beam)
  group_items    all item ids of the member's group
  history        the user's history (same as the prompt)
  popularity     item → training count, a tensor over item ids (shared, not per completion)
  code_len       codes per item (shared)
  teacher_rank   the member's 0-based rank among all items by the teacher (with teacher=sasrec)
  teacher_logprob  the member's log-probability under the teacher (a softmax over the items it
                 may recommend; None where it gives none)
  teacher_first_code_rank  the 0-based rank of the member's first code among all first codes
                 by the teacher's probability mass on their items (with a teacher)
  policy_logprob the member's log-probability under the policy that built the group (the sum
                 over its codes), passed only when a reward function carries
                 ``uses_policy_logprob = True`` (it costs a forward pass of the group)
  future         the user's next training items after the target, nearest first (with
                 future_items > 0; never validation or test items)
  future_discount  credit of the j-th next item: future_discount ** j (shared)

``None`` means "not applicable" (trl's convention): it counts as nothing in the weighted sum.
Name built-ins by name, or your own as ``path/to/file.py:function``, in ``reward_funcs``, with
trl's ``reward_weights``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import numbers
import signal
import threading
import warnings
from pathlib import Path

from etegrl.errors import EtegrlError


class RewardError(EtegrlError):
    """A reward function that cannot be loaded, raises, or returns the wrong thing."""


class RewardWarning(UserWarning):
    """A reward function that gave no value for a whole step (the others still did)."""


def hit(prompts, completions, completion_ids, *, target, **kwargs):
    """1 when the generated item is the target, else 0."""
    return [float(c == t) for c, t in zip(completions, target)]


def rank_aware(prompts, completions, completion_ids, *, target, rank, **kwargs):
    """NDCG-shaped credit: the hit earns 1 / log2(rank + 2), its position in the group."""
    return [1.0 / math.log2(r + 2) if c == t else 0.0 for c, t, r in zip(completions, target, rank)]


def ranking_penalty(prompts, completions, completion_ids, *, target, rank, group_items, **kwargs):
    """MiniOneRec's ranking reward: in groups that contain the target, each wrong item gets
    −(1/log2(rank+2)) normalised by the sum of those weights over the group's wrong items, so
    confident mistakes cost most. Groups without a hit get 0: penalising them as well collapsed
    a model onto a handful of items in MiniOneRec's experiments."""
    out = []
    for c, t, r, group in zip(completions, target, rank, group_items):
        if t not in group or c == t:
            out.append(0.0)
            continue
        wrong = [1.0 / math.log2(k + 2) for k, g in enumerate(group) if g != t]
        out.append(-(1.0 / math.log2(r + 2)) / sum(wrong))
    return out


def prefix_match(prompts, completions, completion_ids, *, target_codes, code_len, **kwargs):
    """Share of leading codes that match the target's (partial credit for a near miss)."""
    out = []
    for codes, tcodes in zip(completion_ids, target_codes):
        n = 0
        for a, b in zip(codes, tcodes):
            if a != b:
                break
            n += 1
        out.append(n / code_len)
    return out


def novelty(prompts, completions, completion_ids, *, popularity, **kwargs):
    """1 − log(1 + count) / log(1 + max count): rarer items score higher (a popularity term)."""
    top = math.log1p(float(popularity.max()))
    return [None if c == 0 else 1.0 - math.log1p(float(popularity[c])) / top for c in completions]


def teacher(prompts, completions, completion_ids, *, teacher_rank, **kwargs):
    """NDCG-shaped credit from a teacher recommender (``teacher=sasrec``): 1 / log2(rank + 2)
    for the member's 0-based rank in the teacher's list of all items; None where the teacher
    gives no rank (no item, or a history item it never recommends)."""
    return [None if r is None else 1.0 / math.log2(r + 2) for r in teacher_rank]


def teacher_first_code(prompts, completions, completion_ids, *, teacher_first_code_rank,
                       **kwargs):
    """The teacher's credit for the member's first code: 1 / log2(rank + 2) for the rank of that
    code among all first codes by the teacher's probability mass on their items. Most lists miss
    the true item at its first code (bench/prefix_reach.py); this scores the choice made there,
    whichever item follows it (with group_first_codes, groups span several first codes to
    compare). None where there is no item."""
    return [None if r is None else 1.0 / math.log2(r + 2) for r in teacher_first_code_rank]


def teacher_logratio(prompts, completions, completion_ids, *, teacher_logprob, policy_logprob,
                     **kwargs):
    """How much more the teacher believes in the member than the policy does:
    log p_teacher(item | history) − log π(item | history), π the policy that built the group.
    Group-normalised, its policy gradient is that of the reverse KL from the policy to the
    teacher over the group's members (on-policy distillation): it raises members the policy
    underrates against the teacher and lowers those it overrates, such as popular items a
    collapsed policy names for everyone, and fades as the two agree. None where the teacher
    gives no probability (no item, or a history item it never recommends)."""
    return [None if t is None else t - p for t, p in zip(teacher_logprob, policy_logprob)]


teacher_logratio.uses_policy_logprob = True


def future_hit(prompts, completions, completion_ids, *, target, future, future_discount,
               **kwargs):
    """Multi-positive hit: 1 for the target, ``future_discount ** j`` for the user's j-th next
    training item after it (``future``), 0 otherwise — a member that names what the user took
    soon after is not wrong in the way a random item is."""
    out = []
    for c, t, later in zip(completions, target, future):
        if c == t:
            out.append(1.0)
        elif c and c in later:
            out.append(future_discount ** (later.index(c) + 1))
        else:
            out.append(0.0)
    return out


BUILTIN = {f.__name__: f for f in (hit, rank_aware, ranking_penalty, prefix_match, novelty,
                                   teacher, teacher_first_code, teacher_logratio, future_hit)}


def load_reward(spec: str):
    """A built-in name or ``path/to/file.py:function``."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if ":" not in spec:
        raise RewardError(f"reward_funcs: {spec!r} is neither a built-in "
                          f"({', '.join(BUILTIN)}) nor 'path/to/file.py:function'")
    path, name = spec.rsplit(":", 1)
    if not Path(path).is_file():
        raise RewardError(f"reward_funcs: {path} (from {spec!r}) not found")
    module_spec = importlib.util.spec_from_file_location(f"user_reward_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - any failure of the user's file is reported
        raise RewardError(f"reward_funcs: importing {path} failed: {err!r}") from err
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RewardError(f"reward_funcs: {path} has no function {name!r}")
    return fn


def reward_name(fn) -> str:
    return getattr(fn, "__name__", repr(fn))


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float, name: str):
    """Stop a reward call that runs longer than ``seconds`` (0 = no limit) with a
    ``RewardError``. A SIGALRM timer: Unix, main thread only, as the training loop runs."""
    if not seconds:
        yield
        return
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        raise RewardError("reward_timeout needs the main thread of a Unix process; set it to 0")

    def expired(signum, frame):
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Timeout:
        raise RewardError(f"reward function {name!r} ran longer than reward_timeout "
                          f"({seconds:g} s)") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def score(fns, weights, prompts, completions, completion_ids, *, timeout: float = 0.0, **kwargs):
    """Weighted sum of all reward functions → (totals, {name: per-completion values}).

    A function that raises, runs past ``timeout`` seconds (0 = no limit), returns the wrong
    length or a value that is not a finite number is a ``RewardError`` naming it; ``None`` values count as 0 in the sum and are left out of that function's mean.
    """
    n = len(completions)
    totals = [0.0] * n
    per_fn = {}
    for fn, w in zip(fns, weights):
        name = reward_name(fn)
        try:
            with time_limit(timeout, name):
                values = fn(prompts, completions, completion_ids, **kwargs)
        except RewardError:
            raise
        except Exception as err:  # noqa: BLE001 - the user's code: say which function failed
            raise RewardError(f"reward function {name!r} raised {err!r}") from err
        if not isinstance(values, (list, tuple)) or len(values) != n:
            got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
            raise RewardError(f"reward function {name!r} returned {got} values for {n} completions")
        clean = []
        for i, v in enumerate(values):
            if v is not None:
                v = _finite(v)
                if v is None:
                    raise RewardError(f"reward function {name!r} returned {values[i]!r} at "
                                      f"position {i}; expected a finite number or None")
                totals[i] += w * v
            clean.append(v)
        if n and all(v is None for v in clean):
            warnings.warn(f"reward function {name!r} gave no value (None) for any of the {n} "
                          f"completions of a step", RewardWarning, stacklevel=2)
        per_fn[name] = clean
    if n and all(v is None for values in per_fn.values() for v in values):
        raise RewardError(f"no reward function gave a value for any of the {n} completions of a "
                          f"step ({', '.join(per_fn)} returned only None): nothing to learn from")
    return totals, per_fn


def _finite(value) -> float | None:
    """A reward value as a float (Python numbers, numpy scalars, 0-d arrays and tensors); None
    if it is not a finite real number (booleans are not rewards)."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None
