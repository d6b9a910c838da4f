from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from etegrl.config import ConfigError, config_help, load_config, parse_args
from tests.conftest import write


@dataclass
class Cfg:
    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    epochs: int = field(default=3, metadata={"help": "epochs"})
    name: str = "run"
    parts: list[str] = field(default_factory=lambda: ["a"])
    mode: Literal["x", "y"] = "x"
    flag: bool = False
    path: str | None = None


def test_yaml_then_overrides(tmp_path):
    f = write(tmp_path / "c.yaml", "lr: 0.01\nepochs: 5\nparts: [a, b]\n")
    cfg = load_config(Cfg, f, ["epochs=7", "mode=y", "flag=true", "path=null", "name=123"])
    assert cfg == Cfg(lr=0.01, epochs=7, name="123", parts=["a", "b"], mode="y", flag=True)


def test_int_accepted_for_float_and_single_item_list(tmp_path):
    cfg = load_config(Cfg, None, ["lr=1", "parts=text"])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.parts == ["text"]
    assert load_config(Cfg, None, ["lr=1e-3"]).lr == 0.001  # YAML 1.1 reads 1e-3 as text


def test_unknown_key_in_file_names_file_and_lists_valid_keys(tmp_path):
    f = write(tmp_path / "c.yaml", "lr: 0.01\nepoch: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, f)
    msg = str(err.value)
    assert str(f) in msg and "'epoch'" in msg and "Did you mean 'epochs'" in msg
    for key in ("lr", "epochs", "name", "parts", "mode", "flag", "path"):
        assert key in msg.split("Valid keys:")[1]


def test_unknown_key_on_command_line():
    with pytest.raises(ConfigError, match=r"command line 'bogus=1': unknown key 'bogus'"):
        parse_args(Cfg, ["bogus=1"])


@pytest.mark.parametrize("override, expected", [
    ("epochs=abc", "key 'epochs' expects int, got 'abc'"),
    ("epochs=1.5", "key 'epochs' expects int"),
    ("flag=maybe", "key 'flag' expects bool"),
    ("mode=z", "key 'mode' expects one of 'x', 'y'"),
])
def test_wrong_type_is_an_error(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(Cfg, None, [override])


def test_malformed_inputs(tmp_path):
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_args(Cfg, ["epochs"])
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Cfg, write(tmp_path / "l.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        parse_args(Cfg, ["--config", str(tmp_path / "missing.yaml")])


def test_help_lists_fields(capsys):
    with pytest.raises(SystemExit):
        parse_args(Cfg, ["--help"])
    out = capsys.readouterr().out
    assert "lr (float, default 0.001)" in out and "learning rate" in out


def test_threads_default_to_the_cores_shared_among_local_processes(monkeypatch):
    import os

    import torch

    from etegrl.distributed import set_threads

    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what accelerate launch exports by default
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        assert set_threads(0) == cores == torch.get_num_threads()
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))
        assert set_threads(0) == 1 == torch.get_num_threads()
        assert set_threads(3) == 3 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_large_tensors_come_from_the_heap_after_keep_freed_memory(monkeypatch):
    import ctypes

    import torch

    from etegrl.malloc import keep_freed_memory

    monkeypatch.setenv("ETEGRL_SYSTEM_MALLOC", "1")
    assert keep_freed_memory() is False
    monkeypatch.delenv("ETEGRL_SYSTEM_MALLOC")
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        pytest.skip("not glibc ≥ 2.33: no mallinfo2 to inspect the heap with")

    class Info(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")]

    mallinfo2.restype = Info
    assert keep_freed_memory() is True
    mapped = mallinfo2().hblkhd  # bytes in blocks that malloc mapped on their own
    x = torch.ones(64 * 2 ** 20 // 4)  # 64 MiB, over glibc's largest mmap threshold
    assert mallinfo2().hblkhd < mapped + 2 ** 20
    del x


@pytest.mark.parametrize("override, key", [
    ("eval_strategy=steps", "eval_strategy"), ("save_strategy=epoch", "save_strategy"),
    ("logging_strategy=epoch", "logging_strategy"), ("save_total_limit=2", "save_total_limit"),
    ("push_to_hub=true", "push_to_hub"), ("optim=sgd", "optim")])
def test_trl_fields_the_rl_loop_does_not_read_are_refused(tmp_path, capsys, override, key):
    from rl.__main__ import main

    assert main([f"output_dir={tmp_path / 'rl'}", override]) == 2
    err = capsys.readouterr().err
    assert f"command line '{override}': key '{key}' (a trl/TrainingArguments option) is not used" in err
    assert not (tmp_path / "rl").exists()


def test_trl_step_and_epoch_names(tmp_path):
    from rl.config import RLConfig

    cfg = load_config(RLConfig, None, ["num_train_epochs=3", "eval_steps=0.25", "save_steps=4"])
    assert (cfg.epochs, cfg.eval_steps, cfg.save_steps) == (3, 0.25, 4)
    assert load_config(RLConfig, None, ["num_train_epochs=2", "epochs=2"]).epochs == 2
    for overrides, message in [
            (["num_train_epochs=3", "epochs=2"], r"command line 'num_train_epochs=3'.*set one of them"),
            (["num_train_epochs=1.5"], "whole number ≥ 1 here .use max_steps"),
            (["eval_steps=10", "eval_every=2"], "both set when to validate"),
            (["logging_steps=2.5"], "key 'logging_steps' must be a whole number of steps"),
            (["gradient_accumulation_steps=0"], "key 'gradient_accumulation_steps' must be ≥ 1"),
            (["logging_steps=0"], "key 'logging_steps' must be > 0")]:
        with pytest.raises(ConfigError, match=message):
            load_config(RLConfig, None, overrides)


def test_trl_fields_the_rl_loop_reads_are_accepted_and_listed(capsys):
    import dataclasses

    from rl.config import RLConfig, TRL_FIELDS_USED

    cfg = load_config(RLConfig, None, ["epsilon=0.3", "max_grad_norm=0.5", "warmup_steps=3"])
    assert (cfg.epsilon, cfg.max_grad_norm, cfg.warmup_steps) == (0.3, 0.5, 3)
    with pytest.raises(ValueError, match="key 'save_total_limit'"):
        RLConfig(save_total_limit=5)  # built in code, not from a file: the value check
    with pytest.raises(ConfigError, match=r"key 'report_to': \['neptune'\] not supported"):
        load_config(RLConfig, None, ["report_to=[neptune]"])
    assert load_config(RLConfig, None, ["report_to=[tensorboard]", "run_name=x"]).run_name == "x"
    text = config_help(RLConfig)
    listed = {line.split()[0] for line in text.splitlines() if line.startswith("  ") and
              not line.startswith("      ")}
    assert TRL_FIELDS_USED <= listed and "save_strategy" not in listed and "optim" not in listed
    assert {"max_steps", "num_train_epochs", "logging_steps", "eval_steps", "save_steps",
            "gradient_accumulation_steps", "max_grad_norm", "report_to", "run_name"} <= listed
    assert listed == {f.name for f in dataclasses.fields(RLConfig)
                      if f.init and not RLConfig.unused_field_error(f.name)}


@pytest.mark.parametrize("folder", sorted(p.name for p in (Path(__file__).resolve().parents[1]
                                                          / "configs").iterdir() if p.is_dir()))
def test_every_shipped_config_loads(folder):
    """Each stage's YAML of every configs/ folder parses and passes its stage's checks (the
    datasets CI never runs would otherwise keep a typo until a user meets it)."""
    from etegrl.prepare import PrepareConfig
    from finetune.config import FinetuneConfig
    from pretrain.config import PretrainConfig
    from rl.config import RLConfig

    root = Path(__file__).resolve().parents[1] / "configs" / folder
    stages = {"prepare": PrepareConfig, "pretrain": PretrainConfig, "finetune": FinetuneConfig,
              "rl": RLConfig}
    assert sorted(p.stem for p in root.glob("*.yaml")) == sorted(stages)
    for stage, cls in stages.items():
        assert isinstance(load_config(cls, root / f"{stage}.yaml"), cls)
