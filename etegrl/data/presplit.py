"""Pre-split sources (RecBole ``.train/.valid/.test.inter``, ETEGRec ``.jsonl``): their rows
are chained back into whole user sequences, which the common splitter then splits again — this
reproduces the source's rows exactly and checks that they are consistent."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .readers import (DataError, RawData, _atomic_rows, _read_lines, natural_key, read_index_file,
                      read_text_file)


@dataclass
class _SplitRow:
    user: str
    history: list[str]
    target: str
    where: str


def chain_train_rows(train: list[_SplitRow]) -> dict[str, list[str]]:
    """Rebuild each user's training sequence from its prefix rows (history → target).

    Histories may be truncated windows, so rows are chained: start from the shortest history
    and repeatedly take the row whose history is the current sequence's last window.
    """
    by_user: dict[str, list[_SplitRow]] = defaultdict(list)
    for row in train:
        by_user[row.user].append(row)
    chains = {}
    for user, rows in by_user.items():
        width = max(len(r.history) for r in rows)
        pending: dict[tuple, list[_SplitRow]] = defaultdict(list)
        for row in rows:
            pending[tuple(row.history)].append(row)
        first = min(rows, key=lambda r: len(r.history))
        pending[tuple(first.history)].remove(first)
        seq = first.history + [first.target]
        while True:
            candidates = pending.get(tuple(seq[-width:]))
            if not candidates:
                break
            seq.append(candidates.pop(0).target)
        left = [r for group in pending.values() for r in group]
        if left:
            raise DataError(f"{left[0].where}: this training row of user {user!r} does not "
                            f"continue the user's other training rows")
        chains[user] = seq
    return chains


def merge_split_rows(train: list[_SplitRow], valid: list[_SplitRow],
                     test: list[_SplitRow]) -> dict[str, list[str]]:
    """Rebuild each user's whole sequence from the rows of a pre-split source.

    The training rows give the training sequence, the validation row must continue it and the
    test row must continue that (its history ends with the validation target). Histories may
    have been truncated, so only their common tails are compared.
    """
    for row in (*train, *valid, *test):
        if not row.history:
            raise DataError(f"{row.where}: empty history for user {row.user!r}; every row "
                            f"needs at least one earlier item")
    chains = chain_train_rows(train)

    def continues(seq, row):
        tail = len(row.history)
        return tail > 0 and seq[-tail:] == row.history

    valid_by_user = {}
    for row in valid:
        if row.user in valid_by_user:
            raise DataError(f"{row.where}: user {row.user!r} has a second validation row")
        chain = chains.pop(row.user, None)
        if chain is not None and not continues(chain, row):
            raise DataError(f"{row.where}: the validation history of user {row.user!r} does "
                            f"not continue the user's training rows")
        base = chain if chain is not None and len(chain) > len(row.history) else row.history
        valid_by_user[row.user] = (row, base + [row.target])
    if chains:
        user = next(iter(chains))
        raise DataError(f"user {user!r} has training rows but no validation row")
    sequences = {}
    for row in test:
        if row.user in sequences:
            raise DataError(f"{row.where}: user {row.user!r} has a second test row")
        v, seq = valid_by_user.pop(row.user, (None, None))
        if v is None:
            raise DataError(f"{row.where}: user {row.user!r} has a test row but no validation row")
        if not continues(seq, row):
            raise DataError(
                f"{row.where}: the test history of user {row.user!r} does not continue its "
                f"validation row ({v.where}): expected it to end with the validation target"
            )
        sequences[row.user] = seq + [row.target]
    if valid_by_user:
        user, (row, _) = next(iter(valid_by_user.items()))
        raise DataError(f"{row.where}: user {user!r} has a validation row but no test row")
    return sequences


def _check_known(rows: list[_SplitRow], known: set[str], what: str) -> None:
    for row in rows:
        for item in row.history + [row.target]:
            if item not in known:
                raise DataError(f"{row.where}: unknown item {item!r} (not in {what})")


def read_recbole_split(data_dir: str | Path, name: str) -> RawData:
    """Pre-split RecBole files ``<name>.{train,valid,test}.inter`` with ``item_id_list``.

    Items are known from ``<name>.item2index`` when present, else from the training file;
    item text comes from ``<name>.text`` (ids mapped through the index) when present.
    """
    base = Path(data_dir) / name
    required = ["user_id", "item_id_list", "item_id"]

    def rows(split):
        path = Path(f"{base}.{split}.inter")
        return [_SplitRow(r["user_id"].strip(), r["item_id_list"].split(), r["item_id"].strip(),
                          f"{path}:{n}") for n, r in _atomic_rows(path, required)]

    train, valid, test = rows("train"), rows("valid"), rows("test")
    index_path = Path(f"{base}.item2index")
    index = read_index_file(index_path) if index_path.is_file() else None
    if index is not None:
        known, what = set(index.values()), index_path.name
        order = sorted(index.values(), key=natural_key)
    else:
        known = {i for r in train for i in r.history + [r.target]}
        what, order = f"{name}.train.inter", None
    _check_known(train, known, what)
    _check_known(valid, known, what)
    _check_known(test, known, what)
    sequences = merge_split_rows(train, valid, test)
    text_path = Path(f"{base}.text")
    text = read_text_file(text_path, index) if text_path.is_file() else {}
    origin = {r.user: r.where for r in test}
    return RawData(sequences=sequences, item_text=text, item_order=order, origin=origin,
                   source=f"{base}.{{train,valid,test}}.inter")


def read_etegrec_jsonl(data_dir: str | Path, name: str) -> RawData:
    """The official ETEGRec format: ``<name>.{train,valid,test}.jsonl`` rows with ``user_id``,
    ``inter_history`` and ``target_id``, plus ``<name>.emb_map.json`` (item token → id ≥ 1)."""
    base = Path(data_dir) / name
    map_path = Path(f"{base}.emb_map.json")
    if not map_path.is_file():
        raise DataError(f"{map_path}: file not found (the item → id map of the ETEGRec format)")
    try:
        emb_map = json.loads(map_path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{map_path}:{err.lineno}: not valid JSON: {err.msg}") from None
    if not isinstance(emb_map, dict) or not all(isinstance(v, int) for v in emb_map.values()):
        raise DataError(f"{map_path}: expected a JSON object mapping item tokens to integer ids")
    ids = sorted(emb_map.values())
    if ids != list(range(ids[0], ids[0] + len(ids))) or ids[0] not in (0, 1):
        raise DataError(f"{map_path}: item ids must be consecutive from 1 (or 0)")
    order = [str(tok) for tok, _ in sorted(emb_map.items(), key=lambda kv: kv[1])]

    def rows(split):
        path = Path(f"{base}.{split}.jsonl")
        out = []
        for number, line in _read_lines(path):
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
                out.append(_SplitRow(str(obj["user_id"]), [str(i) for i in obj["inter_history"]],
                                     str(obj["target_id"]), where))
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON: {err.msg}") from None
            except (KeyError, TypeError):
                raise DataError(f"{where}: expected an object with user_id, inter_history "
                                f"and target_id") from None
        return out

    train, valid, test = rows("train"), rows("valid"), rows("test")
    known = set(order)
    for split_rows in (train, valid, test):
        _check_known(split_rows, known, map_path.name)
    sequences = merge_split_rows(train, valid, test)
    return RawData(sequences=sequences, item_order=order,
                   origin={r.user: r.where for r in test}, source=f"{base}.*.jsonl")


