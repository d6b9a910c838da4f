import json

import pytest

from etegrl.config import ConfigError
from etegrl.data import load_processed
from etegrl.data.readers import DataError, movielens_100k_files
from etegrl.embeddings import load_embedding
from etegrl.prepare import PrepareConfig, main, run
from tests.conftest import ROOT, write

INTER = "user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
    f"u{u}\ti{(u * 3 + k) % 12}\t{k}\n" for u in range(30) for k in range(6))
ITEM = "item_id:token\ttitle:token_seq\tgenre:token_seq\n" + "".join(
    f"i{i}\tItem {i}\t{'Drama' if i % 2 else 'Comedy'} {'Old' if i < 6 else 'New'}\n"
    for i in range(12))


@pytest.fixture
def toy(tmp_path):
    write(tmp_path / "src" / "toy.inter", INTER)
    write(tmp_path / "src" / "toy.item", ITEM)
    return tmp_path


def toy_config(toy, **kw):
    values = dict(format="recbole_inter", data_dir=str(toy / "src"), dataset="toy",
                  output_dir=str(toy / "out"), tag_fields=["genre"], max_len=4,
                  semantic_parts=["sasrec", "tags"], sasrec_hidden=16, sasrec_layers=1,
                  sasrec_heads=1, sasrec_epochs=2, sasrec_batch_size=8)
    values.update(kw)
    return PrepareConfig(**values)


def test_prepare_end_to_end(toy):
    summary = run(toy_config(toy), log=lambda *_: None)
    out = toy / "out"
    data = load_processed(out)
    assert data.stats["users"] == 30 and data.stats["items"] == 12
    assert len(data.splits["valid"]) == 30 and len(data.splits["train"]) == 30 * 3
    assert data.item_text[0].startswith("Item")
    semantic = load_embedding(out / "embeddings" / "semantic.safetensors", n_items=12)
    assert semantic.shape == (13, 16 + 4)  # sasrec 16-d + 4 tags (Comedy, Drama, New, Old)
    assert summary["semantic"]["parts"] == {"sasrec": 16, "tags": 4}
    assert set(summary["sasrec"]["test"]) >= {"recall@1", "recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    # Same config again: reused, not redone; options that do not change the result (threads,
    # progress bars) do not make it another run
    again = run(toy_config(toy, threads=1), log=lambda *_: None)
    assert again == json.loads((out / "summary.json").read_text())


def test_output_dir_holding_another_run_is_an_error(toy):
    run(toy_config(toy), log=lambda *_: None)
    before = (toy / "out" / "embeddings" / "semantic.safetensors").read_bytes()
    with pytest.raises(ConfigError, match=r"holds another prepare run \(keys that differ: max_len\)"):
        run(toy_config(toy, max_len=6), log=lambda *_: None)
    assert (toy / "out" / "embeddings" / "semantic.safetensors").read_bytes() == before
    run(toy_config(toy, max_len=6, overwrite=True), log=lambda *_: None)
    assert load_processed(toy / "out").stats["max_len"] == 6


def test_bad_config_values():
    with pytest.raises(ValueError, match="semantic_parts"):
        PrepareConfig(semantic_parts=["sasrec", "image"])
    with pytest.raises(ValueError, match="feature_file is empty"):
        PrepareConfig(semantic_parts=["file"])


def test_cli_reports_data_errors_with_exit_code(toy, capsys):
    write(toy / "src" / "bad.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\ta\tnoon\n")
    code = main([f"data_dir={toy / 'src'}", "dataset=bad", "format=recbole_inter",
                 f"output_dir={toy / 'out2'}"])
    assert code == 2
    assert "bad.inter:2: timestamp 'noon' is not a number" in capsys.readouterr().err
    code = main(["--config", str(ROOT / "configs/tiny/prepare.yaml"), "sasrec_epoch=3"])
    assert code == 2 and "Did you mean 'sasrec_epochs'" in capsys.readouterr().err


def test_tiny_config_on_movielens(tmp_path):
    try:
        movielens_100k_files()
    except DataError as err:
        pytest.skip(str(err))
    code = main(["--config", str(ROOT / "configs/tiny/prepare.yaml"), f"output_dir={tmp_path}"])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stats"]["users"] == 943
    assert summary["semantic"]["dim"] == 32 + 19  # 19 MovieLens genres, "unknown" included
