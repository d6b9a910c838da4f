"""Every value checked where it enters: one clear error naming the file, line or key (no
traceback), values read back exactly as written, checkpoints matched to their data."""

import shutil
import warnings

import numpy as np
import pytest
import torch

import rewards
from etegrl.data import DataError, RawData, build_splits, load_processed, save_processed
from etegrl.data import read_source
from etegrl.prepare import main as prepare_main
from etegrl.recommend import main as recommend_main
from etegrl.report import main as report_main
from finetune.__main__ import main as finetune_main
from pretrain.__main__ import main as pretrain_main
from rl.__main__ import main as rl_main
from tests.conftest import ROOT, write
from tests.test_bad_input import one_error

HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"


@pytest.mark.parametrize("stamp", ["inf", "-inf", "NaN", "nan"])
def test_timestamps_must_be_finite(tmp_path, stamp):
    write(tmp_path / "t.inter", HEADER + "u\ta\t1\n" f"u\tb\t{stamp}\n" "u\tc\t2\n")
    with pytest.raises(DataError, match=rf"t\.inter:3: timestamp '{stamp}' is not a finite"):
        read_source("recbole_inter", data_dir=str(tmp_path), dataset="t")


def test_duplicate_rows_are_dropped_and_said(tmp_path):
    write(tmp_path / "t.inter", HEADER + "u\ta\t1\nu\tb\t2\nu\tb\t2\nu\tc\t3\nu\tb\t4\n")
    raw = read_source("recbole_inter", data_dir=str(tmp_path), dataset="t")
    assert raw.sequences == {"u": ["a", "b", "c", "b"]}  # a later b is a new interaction
    assert raw.notes == [f"{tmp_path / 't.inter'}: 1 duplicate row(s) (same user, item and "
                         f"timestamp as an earlier row) dropped, the first at line 4 (a copy "
                         f"of line 3)"]


def test_non_utf8_source_is_one_error_line(tmp_path, capsys):
    (tmp_path / "t.inter").write_bytes((HEADER + "u\ta\t1\nu\tb\t2\n").encode()
                                       + b"u\t\xe9t\xe9\t3\n")
    code = prepare_main(["format=recbole_inter", f"data_dir={tmp_path}", "dataset=t",
                         f"output_dir={tmp_path / 'out'}"])
    assert code == 2
    assert f"{tmp_path / 't.inter'}:4: not UTF-8 text (byte 0xe9" in one_error(capsys)


@pytest.mark.parametrize("item, message", [
    ("null", "item null is not a string or an integer"),
    ("true", "item true is not a string or an integer"),
    ('{"a": 1}', 'item {"a": 1} is not a string or an integer'),
    ("1.5", "item 1.5 is not a string or an integer"),
])
def test_json_sequence_items_are_strings_or_integers(tmp_path, item, message):
    write(tmp_path / "x.json", '{"u": ["a", ' + item + ', "b"]}')
    with pytest.raises(DataError, match=rf"x\.json: user 'u': {message}".replace("{", r"\{")):
        read_source("json_sequences", data_dir=str(tmp_path), dataset="x.json")


def test_json_sequences_do_not_merge_1_and_quoted_1(tmp_path):
    write(tmp_path / "x.json", '{"u": [1, 2, 3], "v": [3, "1", 2]}')
    with pytest.raises(DataError, match=r"user 'v': item \"1\" is also written as 1 elsewhere"):
        read_source("json_sequences", data_dir=str(tmp_path), dataset="x.json")


@pytest.mark.parametrize("main, args, message", [
    (prepare_main, ["max_len=0"], "command line 'max_len=0': key 'max_len' must be ≥ 1, got 0"),
    (pretrain_main, ["batch_size=0"], "key 'batch_size' must be ≥ 1, got 0"),
    (pretrain_main, ["levels=0"], "key 'levels' must be ≥ 1, got 0"),
    (pretrain_main, ["lr_rec=0"], "key 'lr_rec' must be > 0, got 0.0"),
    (finetune_main, ["lr=-1"], "command line 'lr=-1': key 'lr' must be > 0, got -1.0"),
    (finetune_main, ["epochs=0"], "key 'epochs' must be ≥ 1, got 0"),
    (finetune_main, ["max_len=0"], "key 'max_len' must be ≥ 1, got 0"),
    (rl_main, ["num_generations=0"], "key 'num_generations' must be ≥ 2, got 0"),
    (rl_main, ["learning_rate=-1"], "key 'learning_rate' must be > 0, got -1.0"),
    (rl_main, ["epochs=0"], "key 'epochs' must be ≥ 1, got 0"),
])
def test_out_of_range_values_name_their_key(tmp_path, capsys, main, args, message):
    # inputs that do not exist: were a check missing, the run would stop at once all the same
    nowhere = [f"data_dir={tmp_path / 'none'}"] + (["format=json_sequences", "dataset=x.json"]
                                                   if main is prepare_main else [])
    assert main([f"output_dir={tmp_path / 'out'}", *nowhere, *args]) == 2
    assert message in one_error(capsys)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_reward_values_must_be_finite_numbers():
    args = ([[1]], [5, 6], [[1], [2]])

    def returning(*values):
        def fn(prompts, completions, completion_ids, **kwargs):
            return list(values)
        return fn

    totals, per_fn = rewards.score([returning(np.float32(0.5), torch.tensor(2.0))], [1.0], *args)
    assert totals == [0.5, 2.0] and per_fn["fn"] == [0.5, 2.0]
    for bad in (float("inf"), -float("inf"), float("nan"), np.float64("inf"), True, np.bool_(True),
                "1", torch.tensor([1.0])):
        with pytest.raises(rewards.RewardError, match=r"'fn' returned .* at position 1; "
                                                      r"expected a finite number or None"):
            rewards.score([returning(1.0, bad)], [1.0], *args)


def test_reward_functions_that_give_no_value():
    args = ([[1]], [5, 6], [[1], [2]])

    def nothing(prompts, completions, completion_ids, **kwargs):
        return [None, None]

    def something(prompts, completions, completion_ids, **kwargs):
        return [1.0, None]

    with pytest.warns(rewards.RewardWarning, match="'nothing' gave no value"):
        totals, _ = rewards.score([nothing, something], [1.0, 1.0], *args)
    assert totals == [1.0, 0.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rewards.RewardWarning)
        with pytest.raises(rewards.RewardError, match="no reward function gave a value"):
            rewards.score([nothing], [1.0], *args)


def truncated_copy(checkpoint, tmp_path, name):
    damaged = tmp_path / "best"
    shutil.copytree(checkpoint, damaged)
    data = (damaged / name).read_bytes()
    (damaged / name).write_bytes(data[: len(data) // 2])
    return damaged


@pytest.mark.parametrize("name", ["model.safetensors", "codes.safetensors",
                                  "tokenizer.safetensors"])
def test_truncated_checkpoint_files_are_one_error_line(tiny_data, trained_run, tmp_path, capsys,
                                                       name):
    damaged = truncated_copy(trained_run / "best", tmp_path, name)
    data = str(tiny_data / "data")
    assert recommend_main(["--checkpoint", str(damaged), "--data-dir", data,
                           "--history", "4"]) == 2
    expected = f"{damaged / name}: not a readable safetensors file"
    assert expected in one_error(capsys)
    assert finetune_main([f"data_dir={data}", f"checkpoint={damaged}", "max_len=8",
                          f"output_dir={tmp_path / 'ft'}", "progress=false"]) == 2
    assert expected in one_error(capsys)


def test_users_file_is_read_back_exactly(tiny_data, trained_run, tmp_path, capsys):
    """Ids holding characters that str.splitlines splits at stay one user each."""
    odd = ["a\u2028b", "c\x0bd", "e\x0cf", "g\x85h", "i\x1cj"]
    seqs = {f"u{u}": [str((u * 7 + 3 * k) % 30 + 1) for k in range(9)] for u in range(40)}
    renamed = {(odd[u] if u < len(odd) else user): items
               for u, (user, items) in enumerate(seqs.items())}
    save_processed(build_splits(RawData(sequences=renamed, source="odd"), max_len=8),
                   tmp_path / "data")
    assert load_processed(tmp_path / "data").users == list(renamed)
    base = ["--checkpoint", str(trained_run / "best"), "--data-dir", str(tmp_path / "data"),
            "--json", "--k", "5"]
    assert recommend_main(base + ["--user", "u7"]) == 0
    by_user = capsys.readouterr().out
    history = [str(i) for i in seqs["u7"]]  # its whole sequence, as --user takes it
    assert recommend_main(base + ["--history", *history]) == 0
    assert capsys.readouterr().out == by_user


def test_user_ids_with_line_breaks_are_refused():
    with pytest.raises(DataError, match=r"user id 'a\\nb' holds a line break"):
        build_splits(RawData(sequences={"a\nb": ["1", "2", "3"]}, source="x"))


def test_recommend_checks_the_data_and_k(tiny_data, trained_run, tmp_path, capsys):
    seqs = {f"u{u}": [str((u + k) % 12 + 1) for k in range(5)] for u in range(10)}
    save_processed(build_splits(RawData(sequences=seqs, source="other"), max_len=8),
                   tmp_path / "other")
    base = ["--checkpoint", str(trained_run / "best"), "--history", "4"]
    assert recommend_main(base + ["--data-dir", str(tmp_path / "other")]) == 2
    assert "has codes for 30 items but" in one_error(capsys)
    for k in ("0", "-3"):
        assert recommend_main(base + ["--data-dir", str(tiny_data / "data"), "--k", k]) == 2
        assert f"k, beam and max_len must be ≥ 1 (got k={k}" in one_error(capsys)


def test_report_on_a_damaged_log_or_results(tiny_data, trained_run, tmp_path, capsys):
    root = tmp_path / "run"
    shutil.copytree(trained_run, root / "pretrain")
    log = root / "pretrain" / "log.jsonl"
    log.write_bytes(log.read_bytes()[:-7] + b"\x00\x00\n{\"epoch\": 1\n")
    assert report_main([str(root)]) == 0  # the table still comes; the curves say why not
    captured = capsys.readouterr()
    assert "| ETEGRec pretrain |" in captured.out
    assert f"warning: no curves for pretrain: {log}:" in captured.err
    (root / "pretrain" / "results.json").write_text('{"test": ')
    assert report_main([str(root)]) == 2
    assert f"{root / 'pretrain' / 'results.json'}: not readable JSON" in one_error(capsys)


def test_readme_says_reward_files_are_code():
    text = (ROOT / "README.md").read_text()
    assert "A reward file is code." in text


def test_reward_time_limit():
    import signal
    import time

    args = ([[1]], [5, 6], [[1], [2]])

    def slow(prompts, completions, completion_ids, **kwargs):
        time.sleep(5)
        return [1.0, 1.0]

    def quick(prompts, completions, completion_ids, **kwargs):
        return [1.0, 0.0]

    start = time.perf_counter()
    with pytest.raises(rewards.RewardError, match=r"'slow' ran longer than reward_timeout \(0.2 s\)"):
        rewards.score([quick, slow], [1.0, 1.0], *args, timeout=0.2)
    assert time.perf_counter() - start < 2
    assert rewards.score([quick], [1.0], *args, timeout=0.2)[0] == [1.0, 0.0]
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no timer left running
    assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None, signal.default_int_handler)

