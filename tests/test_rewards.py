import math

import pytest
import torch

import rewards
from rewards import RewardError, load_reward, score
from tests.conftest import write

# one user, a group of 4 (beam order), target 7 at rank 2; items' codes and target codes
GROUP = [5, 9, 7, 3]
KW = dict(target=[7] * 4, rank=[0, 1, 2, 3], group_items=[GROUP] * 4,
          target_codes=[[1, 2, 3, 0]] * 4, code_len=4,
          popularity=torch.tensor([0, 0, 0, 1, 0, 9, 0, 3, 0, 0]))
CODES = [[1, 2, 9, 0], [4, 4, 4, 0], [1, 2, 3, 0], [1, 5, 5, 0]]


def call(fn, completions=GROUP, **kw):
    return fn([[1, 2]] * len(completions), completions, CODES, **{**KW, **kw})


def test_hit_and_rank_aware():
    assert call(rewards.hit) == [0, 0, 1, 0]
    assert call(rewards.rank_aware) == pytest.approx([0, 0, 1 / math.log2(4), 0])


def test_ranking_penalty_only_in_groups_with_a_hit():
    w = [1 / math.log2(k + 2) for k in (0, 1, 3)]  # the wrong items' ranks
    expect = [-w[0] / sum(w), -w[1] / sum(w), 0.0, -w[2] / sum(w)]
    assert call(rewards.ranking_penalty) == pytest.approx(expect)
    assert sum(call(rewards.ranking_penalty)) == pytest.approx(-1.0)
    miss = [5, 9, 8, 3]
    assert call(rewards.ranking_penalty, completions=miss, group_items=[miss] * 4) == [0, 0, 0, 0]


def test_prefix_match_and_novelty():
    assert call(rewards.prefix_match) == [0.5, 0.0, 1.0, 0.25]
    top = math.log1p(9)
    assert call(rewards.novelty) == pytest.approx(
        [1 - math.log1p(9) / top, 1.0, 1 - math.log1p(3) / top, 1 - math.log1p(1) / top])


def test_future_hit_credits_the_next_training_items():
    # the user took 3 right after the target, then 9; item 5 never
    later = [[3, 9]] * 4
    assert call(rewards.future_hit, future=later, future_discount=0.5) == [0.0, 0.25, 1.0, 0.5]
    assert call(rewards.future_hit, completions=[5, 9, 0, 3], future=later,
                future_discount=0.9) == pytest.approx([0.0, 0.81, 0.0, 0.9])  # 0: no item
    assert call(rewards.future_hit, future=[[]] * 4, future_discount=0.5) == [0, 0, 1, 0]


def test_score_weights_and_none():
    def half(prompts, completions, completion_ids, **kw):
        return [None, 1.0, None, 2.0]
    totals, per_fn = score([rewards.hit, half], [2.0, 0.5], [[1]] * 4, GROUP, CODES, **KW)
    assert totals == [0.0, 0.5, 2.0, 1.0]
    assert set(per_fn) == {"hit", "half"}


def test_user_reward_loader_and_errors(tmp_path):
    path = write(tmp_path / "my_rewards.py", "def long_items(prompts, completions, completion_ids, **kw):\n"
                 "    return [float(c > 5) for c in completions]\n"
                 "def boom(prompts, completions, completion_ids, **kw):\n    raise KeyError('x')\n"
                 "def short(prompts, completions, completion_ids, **kw):\n    return [1.0]\n"
                 "def text(prompts, completions, completion_ids, **kw):\n    return ['a'] * len(completions)\n")
    fn = load_reward(f"{path}:long_items")
    assert call(fn) == [0.0, 1.0, 1.0, 0.0]
    for name, message in [("boom", r"reward function 'boom' raised KeyError\('x'\)"),
                          ("short", r"reward function 'short' returned 1 values for 4 completions"),
                          ("text", r"reward function 'text' returned 'a' at position 0")]:
        with pytest.raises(RewardError, match=message):
            score([load_reward(f"{path}:{name}")], [1.0], [[1]] * 4, GROUP, CODES, **KW)
    with pytest.raises(RewardError, match="has no function 'nope'"):
        load_reward(f"{path}:nope")
    with pytest.raises(RewardError, match="not found"):
        load_reward(f"{tmp_path}/missing.py:f")
    with pytest.raises(RewardError, match="neither a built-in"):
        load_reward("hits")
    bad = write(tmp_path / "broken.py", "this is not python\n")
    with pytest.raises(RewardError, match="importing .*broken.py failed"):
        load_reward(f"{bad}:f")


def test_teacher_first_code_ranks_codes_by_the_teachers_mass():
    """Items 1–4 on first codes 0, 0, 1, 2 with scores 2, 1, 0, 3 (item 0 and item 5 −inf):
    code 2 holds e³ ≈ 20.1, code 0 e² + e ≈ 10.1, code 1 e⁰ = 1, code 3 nothing."""
    from etegrl.teacher import first_code_ranks

    inf = float("-inf")
    scores = torch.tensor([[inf, 2.0, 1.0, 0.0, 3.0, inf]])
    ranks = first_code_ranks(scores, torch.tensor([3, 0, 0, 1, 2, 3]), code_num=4)
    assert ranks.tolist() == [[1, 2, 0, 3]]
    values = rewards.teacher_first_code([[1]] * 3, [4, 1, 0], [[2], [0], [0]],
                                        teacher_first_code_rank=[0, 1, None])
    assert values == [1.0, pytest.approx(1 / math.log2(3)), None]
