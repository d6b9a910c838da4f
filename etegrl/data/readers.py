"""Readers: each source format becomes one in-memory form, ``RawData``.

``RawData.sequences`` maps a user token to its time-ordered item tokens; item text and tags
(genres, categories) are optional. Everything downstream (splits, embeddings) sees only this.
Every malformed input raises ``DataError`` naming the file and line.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """Malformed or inconsistent input data; the message names the file and line."""


@dataclass
class RawData:
    sequences: dict[str, list[str]]
    item_text: dict[str, str] = field(default_factory=dict)
    item_tags: dict[str, list[str]] = field(default_factory=dict)
    # The item universe in id order when the source fixes it (an item index file, an emb_map);
    # None lets the splitter choose a deterministic order.
    item_order: list[str] | None = None
    # Where each user came from, for error messages: user -> "file:line".
    origin: dict[str, str] = field(default_factory=dict)
    source: str = ""


def _read_lines(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if line.strip():
                yield number, line


def _atomic_header(path: Path, line: str, required: list[str]) -> dict[str, int]:
    """Map RecBole atomic-file field names (``name:type``) to column indices."""
    names = [col.split(":", 1)[0].strip() for col in line.split("\t")]
    missing = [r for r in required if r not in names]
    if missing:
        raise DataError(
            f"{path}:1: wrong header {line!r}: missing field(s) {', '.join(missing)} "
            f"(a RecBole atomic header looks like 'user_id:token\\titem_id:token\\t...')"
        )
    return {name: i for i, name in enumerate(names)}


def _atomic_rows(path: Path, required: list[str]):
    """Yield ``(line_number, {field: value})`` for a RecBole atomic file."""
    lines = _read_lines(path)
    try:
        _, header = next(lines)
    except StopIteration:
        raise DataError(f"{path}: empty file, expected a header line") from None
    cols = _atomic_header(path, header, required)
    for number, line in lines:
        parts = line.split("\t")
        if len(parts) != len(cols):
            raise DataError(
                f"{path}:{number}: expected {len(cols)} tab-separated fields, found {len(parts)}"
            )
        yield number, {name: parts[i] for name, i in cols.items()}


def k_core_filter(sequences: dict[str, list[str]], k: int) -> dict[str, list[str]]:
    """Drop users and items with fewer than ``k`` interactions, repeatedly, until stable."""
    if k <= 1:
        return sequences
    seqs = {u: list(items) for u, items in sequences.items()}
    while True:
        item_counts = Counter(i for items in seqs.values() for i in items)
        changed = False
        new = {}
        for user, items in seqs.items():
            kept = [i for i in items if item_counts[i] >= k]
            changed |= len(kept) != len(items)
            if len(kept) >= k:
                new[user] = kept
            else:
                changed = True
        seqs = new
        if not changed:
            return seqs


def read_recbole_inter(path: str | Path, *, k_core: int = 0) -> RawData:
    """A raw RecBole ``.inter`` file: one interaction per line with user, item and timestamp."""
    path = Path(path)
    events: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    origin: dict[str, str] = {}
    for number, row in _atomic_rows(path, ["user_id", "item_id", "timestamp"]):
        try:
            ts = float(row["timestamp"])
        except ValueError:
            raise DataError(
                f"{path}:{number}: timestamp {row['timestamp']!r} is not a number"
            ) from None
        user, item = row["user_id"].strip(), row["item_id"].strip()
        if not user or not item:
            raise DataError(f"{path}:{number}: empty user or item id")
        events[user].append((ts, number, item))
        origin.setdefault(user, f"{path}:{number}")
    # Time order; ties keep file order (the line number), so the result is deterministic.
    sequences = {u: [item for _, _, item in sorted(ev)] for u, ev in events.items()}
    sequences = k_core_filter(sequences, k_core)
    return RawData(sequences=sequences, origin={u: origin[u] for u in sequences},
                   source=str(path))


def read_item_file(path: str | Path, *, text_fields: list[str] | None = None,
                   tag_fields: list[str] = ()) -> tuple[dict[str, str], dict[str, list[str]]]:
    """A RecBole ``.item`` file → (item text, item tags).

    Text joins ``text_fields`` (default: every field but the id) with '. '; tags are the
    space-separated tokens of ``tag_fields`` (e.g. genres), for multi-hot features.
    """
    path = Path(path)
    text, tags = {}, {}
    for number, row in _atomic_rows(path, ["item_id"]):
        fields = text_fields if text_fields else [k for k in row if k != "item_id"]
        unknown = [f for f in list(fields) + list(tag_fields) if f not in row]
        if unknown:
            raise DataError(f"{path}:1: no field(s) {', '.join(unknown)} in the header; "
                            f"available: {', '.join(row)}")
        item = row["item_id"].strip()
        text[item] = ". ".join(row[f].strip() for f in fields if row[f].strip())
        tags[item] = [t for f in tag_fields for t in row[f].split()]
    return text, tags


def read_text_file(path: str | Path, index: dict[str, str] | None = None) -> dict[str, str]:
    """A ``.text`` file (``item_id:token  text:token_seq``); ``index`` maps its ids to ours."""
    path = Path(path)
    out = {}
    for number, row in _atomic_rows(path, ["item_id", "text"]):
        item = row["item_id"].strip()
        if index is not None:
            if item not in index:
                continue  # text for an item that is not in the data: nothing to attach it to
            item = index[item]
        out[item] = row["text"].strip()
    return out


def read_index_file(path: str | Path) -> dict[str, str]:
    """``original_id \\t index`` lines (RecBole ``.item2index``) → {original_id: index token}."""
    path = Path(path)
    out = {}
    for number, line in _read_lines(path):
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataError(f"{path}:{number}: expected 'id<TAB>index', found {line!r}")
        out[parts[0].strip()] = parts[1].strip()
    return out


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


def read_sequence_file(path: str | Path) -> RawData:
    """One user per line: ``user item item ...`` (space-separated, time order)."""
    path = Path(path)
    sequences, origin = {}, {}
    for number, line in _read_lines(path):
        parts = line.split()
        user = parts[0]
        if user in sequences:
            raise DataError(f"{path}:{number}: user {user!r} appears on a second line")
        sequences[user] = parts[1:]
        origin[user] = f"{path}:{number}"
    return RawData(sequences=sequences, origin=origin, source=str(path))


def read_json_sequences(path: str | Path) -> RawData:
    """A JSON object ``{"user": [item, item, ...], ...}`` in time order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object mapping users to item lists")
    sequences = {}
    for user, items in obj.items():
        if not isinstance(items, list):
            raise DataError(f"{path}: user {user!r}: expected a list of items")
        sequences[str(user)] = [str(i) for i in items]
    return RawData(sequences=sequences, origin={u: f"{path} (user {u})" for u in sequences},
                   source=str(path))


def movielens_100k_files() -> dict[str, Path]:
    """Locate MovieLens-100K inside the installed ``recbole`` distribution (without importing it)."""
    import importlib.metadata as md

    try:
        dist = md.distribution("recbole")
    except md.PackageNotFoundError:
        raise DataError(
            "MovieLens-100K is read from the files of the 'recbole' wheel, which is not "
            "installed: pip install --no-deps recbole==1.2.1"
        ) from None
    found = {}
    for f in dist.files or []:
        p = str(f).replace("\\", "/")
        if "/dataset_example/ml-100k/ml-100k." in p:
            found[p.rsplit(".", 1)[1]] = Path(dist.locate_file(f))
    if not {"inter", "item"} <= found.keys() or not found["inter"].is_file():
        raise DataError("the installed 'recbole' has no dataset_example/ml-100k files; "
                        "reinstall it: pip install --no-deps --force-reinstall recbole==1.2.1")
    return found


def natural_key(token: str):
    return (0, int(token), "") if token.isdigit() else (1, 0, token)


def read_source(fmt: str, *, data_dir: str = "", dataset: str = "", k_core: int = 0,
                text_fields: list[str] | None = None, tag_fields: list[str] = ()) -> RawData:
    """Dispatch on the ``format`` option of the data config."""
    base = Path(data_dir) / dataset if dataset else Path(data_dir)
    if fmt == "movielens_100k":
        files = movielens_100k_files()
        raw = read_recbole_inter(files["inter"], k_core=k_core)
        raw.item_text, raw.item_tags = read_item_file(
            files["item"], text_fields=text_fields, tag_fields=tag_fields)
    elif fmt == "recbole_inter":
        raw = read_recbole_inter(f"{base}.inter", k_core=k_core)
        if Path(f"{base}.item").is_file():
            raw.item_text, raw.item_tags = read_item_file(
                f"{base}.item", text_fields=text_fields, tag_fields=tag_fields)
        elif Path(f"{base}.text").is_file():
            raw.item_text = read_text_file(f"{base}.text")
    elif fmt == "recbole_split":
        raw = read_recbole_split(data_dir, dataset)
    elif fmt == "etegrec_jsonl":
        raw = read_etegrec_jsonl(data_dir, dataset)
    elif fmt == "sequence_txt":
        raw = read_sequence_file(base if base.suffix else Path(data_dir) / "user_sequence.txt")
    elif fmt == "json_sequences":
        raw = read_json_sequences(base)
    else:
        raise DataError(f"unknown data format {fmt!r}")
    if k_core > 1 and fmt not in ("movielens_100k", "recbole_inter"):
        raw.sequences = k_core_filter(raw.sequences, k_core)
    return raw
