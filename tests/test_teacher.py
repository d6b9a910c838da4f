"""The SASRec teacher of the rl stage: its scores and ranks, the items it adds to groups, the
``teacher`` reward, and a run that uses them."""

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import save_file

import rewards
from etegrl.embeddings.sasrec import SASRec
from etegrl.teacher import Teacher, TransitionTeacher, add_teacher_items, code_targets
from rl.__main__ import main as rl_main


def teacher_dir(tmp_path, tiny_data, n_items=30):
    """The tiny data folder plus a small random SASRec, as a prepare run would leave it."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "data", data)
    torch.manual_seed(0)
    model = SASRec(n_items, hidden=8, layers=1, heads=1, dropout=0.0, max_len=8)
    save_file(model.state_dict(), str(data / "sasrec_model.safetensors"))
    (data / "prepare_config.yaml").write_text(yaml.safe_dump(
        {"sasrec_hidden": 8, "sasrec_layers": 1, "sasrec_heads": 1, "max_len": 8}))
    return data, model


def test_teacher_scores_and_ranks(tiny_data, tmp_path):
    data, model = teacher_dir(tmp_path, tiny_data)
    teacher = Teacher(data, 30)
    hist = torch.tensor([[3, 5, 7, 0], [2, 0, 0, 0]])
    scores = teacher.scores(hist)
    model.eval()
    with torch.no_grad():
        expected = model.item_scores(model(hist)[[0, 1], [2, 0]])
    torch.testing.assert_close(scores[:, 1:], expected)
    assert torch.isneginf(scores[:, 0]).all()
    excluded = teacher.scores(hist, exclude=True)
    assert torch.isneginf(excluded[0, [3, 5, 7]]).all() and torch.isneginf(excluded[1, 2])
    assert torch.isfinite(excluded[0, [1, 2, 4]]).all()
    ranks = Teacher.ranks(torch.tensor([[float("-inf"), 0.5, 2.0, 0.5, -1.0]]))
    assert ranks.tolist() == [[4, 1, 0, 2, 3]]  # ties by lower item id; padding last


def test_add_teacher_items_by_hand():
    items = torch.tensor([[4, 1, 2, 3], [5, 6, 7, 8]])
    scores = torch.full((2, 10), float("-inf"))
    scores[0, [4, 2, 9, 6]] = torch.tensor([4.0, 3.0, 2.0, 1.0])  # 4 stays in the group already
    scores[1, 5] = 1.0  # only one usable item, and the group's first member holds it
    out = add_teacher_items(items, scores, 2)
    assert out.tolist() == [[4, 1, 2, 9], [5, 6, 7, 8]]
    assert add_teacher_items(items, scores, 0) is items


def test_teacher_reward_by_hand():
    values = rewards.teacher([[1]] * 3, [4, 5, 0], [[1], [2], [0]], teacher_rank=[0, 6, None])
    assert values == [1.0, pytest.approx(1 / 3), None]


def test_teacher_logratio_reward_by_hand():
    values = rewards.teacher_logratio([[1]] * 3, [4, 5, 0], [[1], [2], [0]],
                                      teacher_logprob=[-2.0, -1.0, None],
                                      policy_logprob=[-0.5, -3.0, -1.0])
    assert values == [-1.5, 2.0, None]
    assert rewards.teacher_logratio.uses_policy_logprob


@pytest.mark.parametrize("reward", ["teacher", "teacher_first_code", "teacher_logratio"])
def test_teacher_needs_a_teacher(tmp_path, capsys, reward):
    assert rl_main([f"output_dir={tmp_path / 'rl'}", f"data_dir={tmp_path / 'none'}",
                    f"reward_funcs=[hit,{reward}]", "reward_weights=[1,1]"]) == 2
    assert f"the '{reward}' reward needs a teacher" in capsys.readouterr().err


RECORDER = """
seen = []


def plain(prompts, completions, completion_ids, **kwargs):
    seen.append(kwargs)
    return [0.0] * len(completions)


def wants_policy(prompts, completions, completion_ids, **kwargs):
    seen.append(kwargs)
    return [float(i) for i in range(len(completions))]


wants_policy.uses_policy_logprob = True
"""


def test_rewards_read_teacher_and_policy_logprobs(tiny_data, trained_run, tmp_path):
    """teacher_logprob is the log-softmax of the teacher's scores at each member; policy_logprob,
    passed only to functions that ask for it, the policy's log-probability of the member's codes,
    here recomputed through the model's ordinary forward pass, one member at a time."""
    import torch.nn.functional as F

    from etegrl.model import training_outputs
    from rl.config import RLConfig
    from rl.loop import RLStage

    data, _ = teacher_dir(tmp_path, tiny_data)
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)

    def first_rollout(funcs):
        cfg = RLConfig(data_dir=str(data), checkpoint=str(trained_run / "best"),
                       output_dir=str(tmp_path / "rl"), max_len=8, num_generations=4,
                       per_device_train_batch_size=16, progress=False, teacher="sasrec",
                       reward_funcs=[f"{script}:{f}" for f in funcs],
                       reward_weights=[1.0] * len(funcs))
        stage = RLStage(cfg, log=lambda *_: None)
        stage.setup()
        stage.model.eval()
        torch.manual_seed(0)
        with torch.no_grad():  # the policy moves away from the reference, as after some steps
            for p in stage.model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        hist, targets = next(stage.rows.epoch())
        stage.rollout(hist, targets, graph=False)
        # each spec loads the file as a module of its own
        return stage, cfg, hist, [fn.__globals__["seen"][0] for fn in stage.reward_fns]

    stage, _, _, (plain,) = first_rollout(["plain"])
    assert "policy_logprob" not in plain and "teacher_logprob" in plain
    stage.cleanup()
    stage, cfg, hist, (_, wants) = first_rollout(["plain", "wants_policy"])
    g = cfg.num_generations
    items = torch.tensor(wants["group_items"][::g])  # (users, G)
    expected_teacher = torch.log_softmax(stage.teacher.scores(hist, stage.exclude), 1).gather(1, items)
    got_teacher = torch.tensor([float("nan") if v is None else v
                                for v in wants["teacher_logprob"]]).reshape(items.shape)
    real = items > 0
    torch.testing.assert_close(got_teacher[real], expected_teacher[real])
    # teacher_first_code_rank: the member's first code ranked by the teacher's summed mass
    probs = torch.softmax(stage.teacher.scores(hist, stage.exclude), 1)
    for user, group in enumerate(items.tolist()):
        mass = [float(probs[user][stage.table.codes[:, 0] == c].sum())
                for c in range(stage.table.code_num)]
        order = sorted(range(len(mass)), key=lambda c: (-mass[c], c))
        want = [order.index(int(stage.table.codes[i, 0])) if i else None for i in group]
        assert wants["teacher_first_code_rank"][user * g:(user + 1) * g] == want
    got_policy = torch.tensor(wants["policy_logprob"]).reshape(items.shape)
    with torch.no_grad():
        for j in range(g):
            rows = real[:, j]
            out, _, codes = training_outputs(stage.model, stage.table.codes, hist[rows], items[rows, j])
            lp = F.log_softmax(out["logits"].float(), -1).gather(-1, codes.unsqueeze(-1)).sum((1, 2))
            torch.testing.assert_close(got_policy[rows, j], lp, rtol=1e-4, atol=1e-4)
    stage.cleanup()


def test_rl_run_with_a_teacher(tiny_data, trained_run, tmp_path):
    data, _ = teacher_dir(tmp_path, tiny_data)
    out = tmp_path / "rl"
    assert rl_main([f"data_dir={data}", f"checkpoint={trained_run / 'best'}", f"output_dir={out}",
                    "max_len=8", "num_generations=4", "per_device_train_batch_size=16",
                    "teacher=sasrec", "teacher_items=2", "reward_funcs=[hit,teacher]",
                    "reward_weights=[1.0,0.5]", "progress=false"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["teacher"] == "sasrec" and results["teacher_items"] == 2
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r.get("kind") == "grpo" and "step" in r]
    assert steps and all(0 < r["reward/teacher/mean"] <= 1 for r in steps)
    # the start (the pretrain stage) wrote its test lists: the paired comparison is kept
    paired = results["paired_vs_start"]["ndcg@10"]
    assert paired["users"] == 40 and paired["low"] <= paired["mean"] <= paired["high"]


def test_code_targets_by_hand():
    # items 1..4 with codes (0,0) (0,1) (1,0) (2,0); the teacher: 0.1 0.3 0.4 0.2; target item 2
    item_codes = torch.tensor([[0, 0], [0, 0], [0, 1], [1, 0], [2, 0]])
    probs = torch.tensor([[0.0, 0.1, 0.3, 0.4, 0.2]])
    soft = code_targets(probs, item_codes, torch.tensor([[0, 1]]), code_num=3)
    torch.testing.assert_close(soft, torch.tensor([[[0.4, 0.4, 0.2], [0.25, 0.75, 0.0]]]))
    # no mass on the target's first code: the second position falls back to the true code
    probs = torch.tensor([[0.0, 0.0, 0.0, 0.5, 0.5]])
    soft = code_targets(probs, item_codes, torch.tensor([[0, 1]]), code_num=3)
    torch.testing.assert_close(soft, torch.tensor([[[0.0, 0.5, 0.5], [0.0, 1.0, 0.0]]]))


def test_finetune_with_a_teacher(tiny_data, trained_run, tmp_path):
    from finetune.__main__ import main as finetune_main

    data, _ = teacher_dir(tmp_path, tiny_data)
    out = tmp_path / "ft"
    common = [f"data_dir={data}", f"checkpoint={trained_run / 'best'}", "max_len=8", "epochs=1",
              "batch_size=64", "progress=false", "teacher=sasrec"]
    assert finetune_main(common + [f"output_dir={out}", "teacher_weight=0.7"]) == 0
    # the tiny data repeats no item, so auto excludes history items from the teacher as well
    assert json.loads((out / "results.json").read_text())["teacher"] == {
        "name": "sasrec", "weight": 0.7, "temperature": 1.0, "exclude_history": True}
    # weight 0: the teacher is loaded but the loss is the plain code loss, the same run as none
    zero, none, keep = tmp_path / "zero", tmp_path / "none", tmp_path / "keep"
    assert finetune_main(common + [f"output_dir={zero}", "teacher_weight=0"]) == 0
    assert finetune_main(common[:-1] + [f"output_dir={none}"]) == 0
    # teacher_exclude_history=never: the teacher's mass on history items enters the targets
    assert finetune_main(common + [f"output_dir={keep}", "teacher_weight=0.7",
                                   "teacher_exclude_history=never"]) == 0
    assert json.loads((keep / "results.json").read_text())["teacher"]["exclude_history"] is False
    losses = [[json.loads(line).get("code") for line in (d / "log.jsonl").read_text().splitlines()]
              for d in (out, zero, none, keep)]
    assert losses[1] == losses[2] and losses[0] != losses[1] and losses[3] != losses[0]


@pytest.mark.parametrize("mode, expected", [("auto", True), ("always", True), ("never", False)])
def test_rl_teacher_exclude_history(tiny_data, trained_run, tmp_path, mode, expected):
    """The rl stage's teacher scores (rewards, teacher items, the sft targets) follow
    teacher_exclude_history, not the evaluation's exclude_history."""
    from rl.config import RLConfig
    from rl.loop import RLStage

    data, _ = teacher_dir(tmp_path, tiny_data)
    cfg = RLConfig(data_dir=str(data), checkpoint=str(trained_run / "best"),
                   output_dir=str(tmp_path / "rl"), max_len=8, num_generations=4,
                   per_device_train_batch_size=16, progress=False, teacher="sasrec",
                   teacher_items=2, reward_funcs=["teacher"], reward_weights=[1.0],
                   sft_weight=1.0, sft_teacher_weight=0.5, teacher_exclude_history=mode)
    stage = RLStage(cfg, log=lambda *_: None)
    stage.setup()
    assert stage.exclude is True  # the evaluation's rule on this data
    seen, scores = [], stage.teacher.scores
    stage.teacher.scores = lambda hist, exclude=False: seen.append(exclude) or scores(hist, exclude)
    hist, targets = next(stage.rows.epoch())
    stage.rollout(hist, targets, graph=False)
    assert seen == [expected] and stage.sft_objective.exclude is expected
    stage.cleanup()


def test_rl_reward_teacher_scores_the_groups_and_leaves_the_anchor(tiny_data, trained_run,
                                                                  tmp_path, capsys):
    """reward_teacher=transitions: groups and rewards read the transitions scorer, the sft
    anchor's targets still the SASRec teacher's."""
    from rl.config import RLConfig
    from rl.loop import RLStage

    data, _ = teacher_dir(tmp_path, tiny_data)
    cfg = RLConfig(data_dir=str(data), checkpoint=str(trained_run / "best"),
                   output_dir=str(tmp_path / "rl"), max_len=8, num_generations=4,
                   per_device_train_batch_size=16, progress=False, teacher="sasrec",
                   reward_teacher="transitions", teacher_items=2, reward_funcs=["teacher"],
                   reward_weights=[1.0], sft_weight=1.0, sft_teacher_weight=0.5)
    stage = RLStage(cfg, log=lambda *_: None)
    stage.setup()
    assert isinstance(stage.reward_scorer, TransitionTeacher) and isinstance(stage.teacher, Teacher)
    seen, group_rewards = [], stage.group_rewards
    stage.group_rewards = lambda *a, **k: seen.append(a[4]) or group_rewards(*a, **k)
    hist, targets, rows = next(stage.rows.epoch())
    ro = stage.rollout(hist, targets, rows, graph=False)
    exclude = stage.teacher_exclude
    # the transitions scorer leaves each prompt's target and next training item out
    future = stage.prompt_future(targets, rows)
    train = stage.data.splits["train"]
    first = torch.arange(4)  # a user's first training rows: the next two training items follow
    assert stage.prompt_future(torch.tensor(train["target"][:4]), first).tolist() == [
        [train["target"][r]] + stage.own_future[r] + [0] * (2 - len(stage.own_future[r]))
        for r in range(4)]
    assert all(len(stage.own_future[r]) == 2 for r in range(2))  # transition_window 3
    torch.testing.assert_close(seen[0], stage.reward_scorer.scores(hist, exclude, future=future))
    assert not torch.equal(seen[0], stage.reward_scorer.scores(hist, exclude))
    torch.testing.assert_close(ro.target_scores, stage.teacher.scores(hist, exclude))
    stage.cleanup()
    # with no teacher at all, the reward's scorer alone is enough; none of either is an error
    assert rl_main([f"output_dir={tmp_path / 'x'}", f"data_dir={data}", "teacher=none",
                    "reward_teacher=none", "reward_funcs=[teacher]", "reward_weights=[1]"]) == 2
    assert "needs a teacher" in capsys.readouterr().err


def test_teacher_reads_long_histories_from_their_end(tiny_data, tmp_path):
    data, _ = teacher_dir(tmp_path, tiny_data)  # its max_len is 8
    teacher = Teacher(data, 30)
    long = torch.tensor([list(range(1, 13)) + [0, 0], [4, 5, 6] + [0] * 11])
    short = torch.tensor([list(range(5, 13)), [4, 5, 6, 0, 0, 0, 0, 0]])
    torch.testing.assert_close(teacher.scores(long, exclude=True),
                               teacher.scores(short, exclude=True))


def test_window_scores_are_the_prefix_scores(tiny_data, tmp_path):
    """Every scored position of a sequence window gets what the teacher gives the window's
    items up to it as a prefix row, with and without history items excluded."""
    data, _ = teacher_dir(tmp_path, tiny_data)
    teacher = Teacher(data, 30)
    items = torch.tensor([[3, 5, 7, 9], [2, 4, 6, 0]])
    targets = torch.tensor([[0, 7, 9, 11], [4, 6, 8, 0]])  # position (0, 0) unscored
    prefixes = torch.tensor([[3, 5, 0, 0], [3, 5, 7, 0], [3, 5, 7, 9],
                             [2, 0, 0, 0], [2, 4, 0, 0], [2, 4, 6, 0]])
    for exclude in (False, True):
        torch.testing.assert_close(teacher.window_scores(items, targets, exclude),
                                   teacher.scores(prefixes, exclude))
    with pytest.raises(ValueError, match="longer than the teacher's max_len"):
        teacher.window_scores(torch.ones(1, 9, dtype=torch.long), torch.ones(1, 9))


def test_pretrain_with_a_teacher(tiny_data, tmp_path):
    from pretrain.__main__ import main as pretrain_main

    data, _ = teacher_dir(tmp_path, tiny_data)
    common = [f"data_dir={data}", "d_model=32", "d_ff=64", "num_layers=1",
              "num_decoder_layers=1", "num_heads=2", "d_kv=16", "max_len=8", "code_num=8",
              "e_dim=8", "tok_hidden=[32]", "tokenizer_pretrain_epochs=2", "epochs=4",
              "warmup_epochs=1", "batch_size=64", "progress=false", "teacher=sasrec"]
    out, zero = tmp_path / "pre", tmp_path / "zero"
    assert pretrain_main(common + [f"output_dir={out}", "teacher_temperature=2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["teacher"] == {"name": "sasrec", "weight": 0.5, "temperature": 2.0,
                                  "exclude_history": True}
    # the teacher's targets reach the code loss: the same run at weight 0 logs other losses
    assert pretrain_main(common + [f"output_dir={zero}", "teacher_weight=0"]) == 0
    losses = [[json.loads(line).get("code") for line in (d / "log.jsonl").read_text()
               .splitlines()] for d in (out, zero)]
    assert losses[0] != losses[1]


def test_rl_sft_term_with_the_teacher(tiny_data, trained_run, tmp_path):
    """sft_teacher_weight: the rl stage's sft term is the distillation loss of the true items."""
    from etegrl.losses import code_loss
    from etegrl.model import training_outputs
    from rl.config import RLConfig
    from rl.loop import RLStage

    data, _ = teacher_dir(tmp_path, tiny_data)
    cfg = RLConfig(data_dir=str(data), checkpoint=str(trained_run / "best"),
                   output_dir=str(tmp_path / "rl"), max_len=8, num_generations=4,
                   per_device_train_batch_size=32, progress=False, teacher="sasrec",
                   sft_weight=1.0, sft_teacher_weight=0.6)
    stage = RLStage(cfg, log=lambda *_: None)
    stage.setup()
    stage.model.eval()
    hist, targets = next(stage.rows.epoch())
    _, metrics = stage.rollout_loss(stage.rollout(hist, targets, graph=False))
    with torch.no_grad():
        out, _, target_codes = training_outputs(stage.model, stage.table.codes, hist, targets)
        soft = code_targets(torch.softmax(stage.teacher.scores(hist, stage.exclude), -1),
                            stage.table.codes, target_codes, stage.table.code_num)
        expected = code_loss(out["logits"], target_codes, soft=soft, soft_weight=0.6)
        plain = code_loss(out["logits"], target_codes)
    assert metrics["sft"] == pytest.approx(expected.item(), rel=1e-4)
    assert abs(expected.item() - plain.item()) > 1e-3  # the teacher changed the term
    stage.cleanup()
    with pytest.raises(ValueError, match="sft_teacher_weight needs"):
        RLConfig(sft_teacher_weight=0.5, sft_weight=1.0)


def test_pretrain_on_sequences_with_a_teacher(tiny_data, tmp_path, capsys):
    from pretrain.__main__ import main as pretrain_main

    data, _ = teacher_dir(tmp_path, tiny_data)
    common = [f"data_dir={data}", "d_model=32", "d_ff=64", "num_layers=1",
              "num_decoder_layers=1", "num_heads=2", "d_kv=16", "code_num=8", "e_dim=8",
              "tok_hidden=[32]", "tokenizer_pretrain_epochs=2", "epochs=4", "warmup_epochs=1",
              "batch_size=16", "progress=false", "train_on=sequences", "causal_encoder=true",
              "rows_per_user=0", "teacher=sasrec"]
    runs = {w: tmp_path / f"w{w}" for w in ("0.7", "0")}
    for w, out in runs.items():
        assert pretrain_main(common + ["max_len=8", f"teacher_weight={w}",
                                       f"output_dir={out}"]) == 0
    assert pretrain_main([a for a in common if a != "teacher=sasrec"]
                         + ["max_len=8", f"output_dir={tmp_path / 'none'}"]) == 0
    losses = [[json.loads(line).get("code") for line in (d / "log.jsonl").read_text()
               .splitlines()] for d in (*runs.values(), tmp_path / "none")]
    assert losses[1] == losses[2] and losses[0] != losses[1]
    # windows longer than the teacher reads: one error naming the key
    assert pretrain_main(common + ["max_len=10", f"output_dir={tmp_path / 'long'}"]) == 2
    assert "max_len=10: sequence windows with a teacher" in capsys.readouterr().err


def test_rl_sft_on_windows_is_the_finetune_control_plus_the_rl_term(tiny_data, tmp_path):
    """sft_rows=sequences: with the RL term zero (a constant reward leaves every advantage 0,
    beta 0) a GRPO run trains exactly as a finetune of the same steps on the same windows, with
    the teacher's targets, and so does the rl stage's own control (control=true) of a run with a
    real reward; the run with that reward does not."""
    from finetune.__main__ import main as finetune_main
    from pretrain.__main__ import main as pretrain_main
    from etegrl.checkpoint import load_checkpoint

    data, _ = teacher_dir(tmp_path, tiny_data)
    start = tmp_path / "pre"
    assert pretrain_main([f"data_dir={data}", f"output_dir={start}", "d_model=32", "d_ff=64",
                          "num_layers=1", "num_decoder_layers=1", "num_heads=2", "d_kv=16",
                          "code_num=8", "e_dim=8", "tok_hidden=[32]", "max_len=8",
                          "tokenizer_pretrain_epochs=2", "epochs=2", "warmup_epochs=1",
                          "batch_size=16", "train_on=sequences", "causal_encoder=true",
                          "progress=false"]) == 0
    common = [f"data_dir={data}", f"checkpoint={start / 'best'}", "max_len=8", "epochs=2",
              "rows_per_user=1", "weight_decay=0.01", "teacher=sasrec", "select=last",
              "progress=false", "seed=3"]
    assert finetune_main(common + [f"output_dir={tmp_path / 'control'}", "batch_size=8",
                                   "train_on=sequences", "lr=0.001", "warmup_ratio=0.0",
                                   "teacher_weight=0.5", "dropout_rate=0.0", "patience=0"]) == 0
    (tmp_path / "const.py").write_text(
        "def same(prompts, completions, *args, **kwargs):\n    return [1.0] * len(completions)\n")
    rl = common + ["num_generations=4", "per_device_train_batch_size=32",
                   "learning_rate=0.001", "lr_scheduler_type=cosine", "beta=0.0",
                   "inject_target=false", "sft_weight=1.0", "sft_teacher_weight=0.5",
                   "sft_rows=sequences"]
    assert rl_main(rl + [f"output_dir={tmp_path / 'rl'}",
                         f"reward_funcs=[{tmp_path / 'const.py'}:same]"]) == 0
    assert rl_main(rl + [f"output_dir={tmp_path / 'hit'}", "reward_funcs=[hit]"]) == 0
    # the rl stage's own control: the hit run without its RL term
    assert rl_main(rl + [f"output_dir={tmp_path / 'own'}", "reward_funcs=[hit]",
                         "control=true", "beta=0.04"]) == 0
    control, rl_zero, rl_hit, own = (load_checkpoint(tmp_path / d / "best")["model"].state_dict()
                                     for d in ("control", "rl", "hit", "own"))
    start_weights = load_checkpoint(start / "best")["model"].state_dict()
    assert any(not torch.equal(start_weights[k], v) for k, v in control.items())
    for k, v in control.items():
        torch.testing.assert_close(rl_zero[k], v, rtol=1e-4, atol=1e-6, msg=k)
        torch.testing.assert_close(own[k], v, rtol=1e-4, atol=1e-6, msg=k)
    assert any((rl_hit[k] - v).abs().max() > 1e-4 for k, v in control.items())
    logged = [json.loads(line) for line in (tmp_path / "rl" / "log.jsonl").read_text().splitlines()]
    assert sum("sft" in r for r in logged) >= 1
