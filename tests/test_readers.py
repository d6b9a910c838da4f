import json

import pytest

from etegrl.data import DataError, build_splits, read_source
from etegrl.data.readers import movielens_100k_files
from tests.conftest import write

INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "u1\ta\t5\t30\n" "u1\tb\t3\t10\n" "u1\tc\t4\t20\n" "u1\td\t4\t20\n"
         "u2\tb\t1\t5\n" "u2\tc\t1\t6\n" "u2\ta\t1\t7\n")
ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "a\tAlpha\t1990\tDrama Comedy\n" "b\tBeta\t1991\tDrama\n"
        "c\tGamma\t1992\tAction\n" "d\tDelta\t1993\tAction Drama\n")


def test_recbole_inter_time_order_ties_keep_file_order(tmp_path):
    write(tmp_path / "toy.inter", INTER)
    write(tmp_path / "toy.item", ITEM)
    raw = read_source("recbole_inter", data_dir=str(tmp_path), dataset="toy",
                      text_fields=["movie_title", "release_year"], tag_fields=["class"])
    # u1: b(10) c(20, line 4) d(20, line 5) a(30)
    assert raw.sequences == {"u1": ["b", "c", "d", "a"], "u2": ["b", "c", "a"]}
    assert raw.item_text["a"] == "Alpha. 1990"
    assert raw.item_tags["d"] == ["Action", "Drama"]


def test_k_core_filter_is_iterative(tmp_path):
    # Item d occurs once: with k=2 it goes, leaving u1 with 3 items; all items then occur twice.
    write(tmp_path / "toy.inter", INTER)
    raw = read_source("recbole_inter", data_dir=str(tmp_path), dataset="toy", k_core=2)
    assert raw.sequences == {"u1": ["b", "c", "a"], "u2": ["b", "c", "a"]}
    raw = read_source("recbole_inter", data_dir=str(tmp_path), dataset="toy", k_core=4)
    assert raw.sequences == {}


def _split_files(tmp_path, valid_extra="", test_target="5"):
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    write(tmp_path / "S.train.inter", head + "0\t1\t2\n" + "0\t1 2\t3\n" + "1\t2\t4\n")
    write(tmp_path / "S.valid.inter", head + "0\t1 2 3\t4\n" + "1\t2 4\t3\n" + valid_extra)
    write(tmp_path / "S.test.inter", head + f"0\t1 2 3 4\t{test_target}\n" + "1\t2 4 3\t1\n")


def test_recbole_split_rebuilds_sequences_and_reproduces_rows(tmp_path):
    _split_files(tmp_path)
    write(tmp_path / "S.item2index", "A1\t1\nA2\t2\nA3\t3\nA4\t4\nA5\t5\n")
    write(tmp_path / "S.text", "item_id:token\ttext:token_seq\nA1\tone\nA5\tfive\nZZ\tnone\n")
    raw = read_source("recbole_split", data_dir=str(tmp_path), dataset="S")
    assert raw.sequences == {"0": ["1", "2", "3", "4", "5"], "1": ["2", "4", "3", "1"]}
    assert raw.item_text == {"1": "one", "5": "five"}
    data = build_splits(raw)
    assert len(data.splits["train"]) == 3  # the same rows as S.train.inter


def test_recbole_split_unknown_item_in_test_names_file_and_line(tmp_path):
    _split_files(tmp_path, test_target="9")  # 9 is in no training row and no index
    with pytest.raises(DataError, match=r"S\.test\.inter:2: unknown item '9'"):
        read_source("recbole_split", data_dir=str(tmp_path), dataset="S")


def test_recbole_split_inconsistent_test_row(tmp_path):
    _split_files(tmp_path)
    write(tmp_path / "S.test.inter", "user_id:token\titem_id_list:token_seq\titem_id:token\n"
          "0\t1 2 4\t3\n" "1\t2 4 3\t1\n")
    with pytest.raises(DataError, match=r"S\.test\.inter:2: the test history of user '0'"):
        read_source("recbole_split", data_dir=str(tmp_path), dataset="S")


def test_wrong_header(tmp_path):
    write(tmp_path / "bad.inter", "user:token\titem_id:token\ttimestamp:float\nu\ta\t1\n")
    with pytest.raises(DataError, match=r"bad\.inter:1: wrong header .*missing field\(s\) user_id"):
        read_source("recbole_inter", data_dir=str(tmp_path), dataset="bad")


def test_non_numeric_timestamp(tmp_path):
    write(tmp_path / "bad.inter", "user_id:token\titem_id:token\ttimestamp:float\n"
          "u\ta\t1\n" "u\tb\tyesterday\n")
    with pytest.raises(DataError, match=r"bad\.inter:3: timestamp 'yesterday' is not a number"):
        read_source("recbole_inter", data_dir=str(tmp_path), dataset="bad")


def test_wrong_field_count(tmp_path):
    write(tmp_path / "bad.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\ta\n")
    with pytest.raises(DataError, match=r"bad\.inter:2: expected 3 tab-separated fields, found 2"):
        read_source("recbole_inter", data_dir=str(tmp_path), dataset="bad")


def test_user_with_too_few_interactions(tmp_path):
    write(tmp_path / "seq.txt", "u1 a b c d\nu2 a b\n")
    raw = read_source("sequence_txt", data_dir=str(tmp_path), dataset="seq.txt")
    with pytest.raises(DataError, match=r"seq\.txt:2: user 'u2' has 2 interaction\(s\); "
                                        r"leave-one-out needs at least 3"):
        build_splits(raw)


def test_sequence_file(tmp_path):
    write(tmp_path / "seq.txt", "u1 a b c d\n\nu2 c b a\n")
    raw = read_source("sequence_txt", data_dir=str(tmp_path), dataset="seq.txt")
    assert raw.sequences == {"u1": ["a", "b", "c", "d"], "u2": ["c", "b", "a"]}
    write(tmp_path / "dup.txt", "u1 a b c\nu1 a b c\n")
    with pytest.raises(DataError, match=r"dup\.txt:2: user 'u1' appears on a second line"):
        read_source("sequence_txt", data_dir=str(tmp_path), dataset="dup.txt")


def test_json_sequences(tmp_path):
    write(tmp_path / "x.json", json.dumps({"0": [3, 1, 2], "1": [0, 1, 2, 3]}))
    raw = read_source("json_sequences", data_dir=str(tmp_path), dataset="x.json")
    assert raw.sequences == {"0": ["3", "1", "2"], "1": ["0", "1", "2", "3"]}


def _jsonl(path, rows):
    write(path, "".join(json.dumps(r) + "\n" for r in rows))


def test_etegrec_jsonl(tmp_path):
    write(tmp_path / "E.emb_map.json", json.dumps({"x": 1, "y": 2, "z": 3, "w": 4}))
    _jsonl(tmp_path / "E.train.jsonl", [{"user_id": "u", "inter_history": ["x"], "target_id": "y"}])
    _jsonl(tmp_path / "E.valid.jsonl", [{"user_id": "u", "inter_history": ["x", "y"], "target_id": "z"}])
    _jsonl(tmp_path / "E.test.jsonl", [{"user_id": "u", "inter_history": ["x", "y", "z"], "target_id": "w"}])
    raw = read_source("etegrec_jsonl", data_dir=str(tmp_path), dataset="E")
    assert raw.sequences == {"u": ["x", "y", "z", "w"]}
    assert build_splits(raw).item_tokens == ["x", "y", "z", "w"]  # ids follow emb_map
    _jsonl(tmp_path / "E.test.jsonl", [{"user_id": "u", "inter_history": ["x", "y", "z"], "target_id": "q"}])
    with pytest.raises(DataError, match=r"E\.test\.jsonl:1: unknown item 'q' \(not in E\.emb_map\.json\)"):
        read_source("etegrec_jsonl", data_dir=str(tmp_path), dataset="E")
    write(tmp_path / "E.test.jsonl", '{"user_id": "u", "inter_history": ["x"]}\n')
    with pytest.raises(DataError, match=r"E\.test\.jsonl:1: expected an object with user_id"):
        read_source("etegrec_jsonl", data_dir=str(tmp_path), dataset="E")


def test_movielens_100k_from_the_recbole_wheel():
    try:
        movielens_100k_files()
    except DataError as err:  # the test command installs it; a bare environment may not
        pytest.skip(str(err))
    raw = read_source("movielens_100k", text_fields=["movie_title", "release_year", "class"],
                      tag_fields=["class"])
    data = build_splits(raw)
    assert (data.stats["users"], data.stats["items"], data.stats["interactions"]) == (943, 1682, 100000)
    toy_story = data.item_tokens.index("1")
    assert data.item_text[toy_story] == "Toy Story. 1995. Animation Children's Comedy"
    assert data.item_tags[toy_story] == ["Animation", "Children's", "Comedy"]


def test_scientific_stats(shared_data):
    raw = read_source("recbole_split", data_dir=str(shared_data / "scientific"), dataset="Scientific")
    data = build_splits(raw, max_len=50)
    assert (data.stats["users"], data.stats["items"]) == (8442, 4385)
    assert data.stats["items_in_train"] == 4373
    assert data.stats["rows"]["train"] == 34101  # the rows of Scientific.train.inter
    assert data.stats["items_with_text"] == 4385
    test_file = (shared_data / "scientific" / "Scientific.test.inter").read_text().splitlines()[1:]
    u, hist, target = test_file[0].split("\t")
    row = data.splits["test"][0]
    assert [data.item_tokens[i - 1] for i in row["history"]] == hist.split()
    assert data.item_tokens[row["target"] - 1] == target


def test_beauty_stats(shared_data):
    raw = read_source("sequence_txt", data_dir=str(shared_data / "beauty"), dataset="user_sequence.txt")
    s = build_splits(raw).stats
    assert (s["users"], s["items"], s["interactions"]) == (22363, 12101, 198502)
