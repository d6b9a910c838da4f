"""The transitions teacher: item-to-item transition counts of the training sequences."""

import json

import torch

from etegrl.teacher import TransitionTeacher
from rl.__main__ import main as rl_main


def test_transition_teacher_by_hand():
    # window 2, backward 0.5: C[1] = {2: 1, 3: 0.5 + 1}, C[2] = {1: 0.5, 3: 2, 4: 0.5}
    t = TransitionTeacher([[1, 2, 3], [2, 3, 4], [1, 3]], 5, window=2, history=2, backward=0.5)
    counts = t.counts_t.to_dense().T
    torch.testing.assert_close(counts[1], torch.tensor([0, 0, 1, 1.5, 0, 0]))
    torch.testing.assert_close(counts[2], torch.tensor([0, 0.5, 0, 2, 0.5, 0]))
    torch.testing.assert_close(counts[4], torch.tensor([0, 0, 0.25, 0.5, 0, 0]))
    # history [1, 2]: C[2] + 0.7 C[1] = (0, .5, .7, 3.05, .5), sum 4.75, mixed 0.9 / 0.1 with
    # the training popularity (2, 2, 3, 1) / 8; an item never seen in training: popularity only
    hist = torch.tensor([[1, 2, 0], [5, 0, 0]])
    pop = torch.tensor([0, 2, 2, 3, 1, 0]) / 8
    expected = torch.stack([0.9 * torch.tensor([0, .5, .7, 3.05, .5, 0]) / 4.75 + 0.1 * pop, pop])
    torch.testing.assert_close(t.distribution(hist), expected)
    scores = t.scores(hist, exclude=True)
    assert torch.isneginf(scores[0, [0, 1, 2]]).all() and torch.isneginf(scores[1, [0, 5]]).all()
    # item 5 is in no training sequence: rankable, below every item with a count
    assert torch.isfinite(scores[0, 5]) and scores[0, 5] < scores[0, 3:5].min()
    torch.testing.assert_close(scores[0, 3:5], expected[0, 3:5].log())
    # every scored window position reads the window's items up to it, as scores does, and
    # leaves out what follows it in the window
    windows = t.window_scores(torch.tensor([[1, 2, 3, 0]]), torch.tensor([[2, 3, 0, 0]]))
    torch.testing.assert_close(windows, t.scores(torch.tensor([[1, 0], [1, 2]]),
                                                 future=torch.tensor([[2, 3], [3, 0]])))
    # the most recent items only: history=1 reads item 2 alone
    one = TransitionTeacher([[1, 2, 3], [2, 3, 4], [1, 3]], 5, window=2, history=1)
    torch.testing.assert_close(one.distribution(torch.tensor([[1, 2]])),
                               one.distribution(torch.tensor([[2, 0]])))


def test_transition_teacher_in_the_stages(tiny_data, trained_run, tmp_path, capsys):
    from finetune.__main__ import main as finetune_main

    data = tiny_data / "data"
    common = [f"data_dir={data}", f"checkpoint={trained_run / 'best'}", "max_len=8", "epochs=1",
              "batch_size=64", "progress=false"]
    plain, taught = tmp_path / "plain", tmp_path / "taught"
    assert finetune_main(common + [f"output_dir={plain}"]) == 0
    assert finetune_main(common + [f"output_dir={taught}", "teacher=transitions",
                                   "teacher_weight=0.7"]) == 0
    losses = [[json.loads(line).get("code") for line in (d / "log.jsonl").read_text().splitlines()]
              for d in (plain, taught)]
    assert losses[0] != losses[1]
    out = tmp_path / "rl"
    assert rl_main([f"data_dir={data}", f"checkpoint={trained_run / 'best'}", f"output_dir={out}",
                    "max_len=8", "num_generations=4", "per_device_train_batch_size=16",
                    "teacher=transitions", "teacher_items=2", "reward_funcs=[hit,teacher]",
                    "reward_weights=[1.0,0.5]", "progress=false"]) == 0
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r.get("kind") == "grpo" and "step" in r]
    assert steps and all(0 < r["reward/teacher/mean"] <= 1 for r in steps)
    capsys.readouterr()
    assert finetune_main(common + [f"output_dir={tmp_path / 'bad'}", "teacher=transitions",
                                   "transition_window=0"]) == 2
    assert "transition_window" in capsys.readouterr().err


def test_transition_teacher_leaves_a_rows_own_pairs_out():
    # a training row's leave-out scores are those of the counts had its sequence stopped at
    # the history, as it does for a validation or test row
    seqs = [[1, 2, 3, 4, 5], [2, 3, 6], [1, 4, 6, 5], [3, 5, 2], [2, 4]]
    t = TransitionTeacher(seqs, 7, window=2, history=3, backward=0.5)
    for cut in (1, 2, 3, 4):
        stopped = TransitionTeacher([seqs[0][:cut]] + seqs[1:], 7, window=2, history=3,
                                    backward=0.5)
        hist = torch.tensor([seqs[0][:cut]])
        future = torch.tensor([seqs[0][cut:] + [0]])  # right-padded
        torch.testing.assert_close(t.distribution(hist, future), stopped.distribution(hist))
        torch.testing.assert_close(t.scores(hist, future=future), stopped.scores(hist))
        if cut == 2:  # the target 3 loses the pair 2 → 3 and its half of 1 → 3
            assert t.scores(hist, future=future)[0, 3] < t.scores(hist)[0, 3]
    # a batch: each row its own future; a row with no future is scored as without one
    hist = torch.tensor([[1, 2, 0], [2, 3, 0], [1, 4, 6]])
    future = torch.tensor([[3, 4, 5], [6, 0, 0], [0, 0, 0]])
    both = t.distribution(hist, future)
    torch.testing.assert_close(both[2], t.distribution(hist[2:])[0])
    torch.testing.assert_close(
        both[1], TransitionTeacher([seqs[0], [2, 3]] + seqs[2:], 7, window=2, history=3,
                                   backward=0.5).distribution(hist[1:2])[0])
    # every position of a window leaves out the window's items after it and the next item
    windows = t.window_scores(torch.tensor([[1, 2, 3, 4]]), torch.tensor([[2, 3, 4, 5]]))
    for w in range(4):
        stopped = TransitionTeacher([seqs[0][:w + 1]] + seqs[1:], 7, window=2, history=3,
                                    backward=0.5)
        torch.testing.assert_close(windows[w], stopped.scores(torch.tensor([seqs[0][:w + 1]]))[0])
    # leave_out=False: the counts as they are, future or not
    kept = TransitionTeacher(seqs, 7, window=2, history=3, backward=0.5, leave_out=False)
    torch.testing.assert_close(kept.distribution(hist, future), kept.distribution(hist))
