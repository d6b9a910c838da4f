"""Readers: each source format becomes one in-memory form, ``RawData``.

``RawData.sequences`` maps a user token to its time-ordered item tokens; item text and tags
(genres, categories) are optional. Everything downstream (splits, embeddings) sees only this.
Every malformed input raises ``DataError`` naming the file and line.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EtegrlError


class DataError(EtegrlError):
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
    # What the reader changed or noticed in the input (shown by the prepare step).
    notes: list[str] = field(default_factory=list)


def _not_utf8(path: Path, data: bytes, err: UnicodeDecodeError) -> DataError:
    line = data.count(b"\n", 0, err.start) + 1
    return DataError(f"{path}:{line}: not UTF-8 text (byte {data[err.start]:#04x} at offset "
                     f"{err.start}); save the file as UTF-8")


def read_text(path: Path) -> str:
    """A whole file as UTF-8 text; undecodable bytes are a ``DataError`` naming the line."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, data, err) from None


def _read_lines(path: Path):
    # split on "\n" only: str.splitlines would also split inside a field at \x0b, \x1c, U+2028 …
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        line = line.rstrip("\r")
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
    first_seen: dict[tuple[str, str, float], int] = {}
    duplicates: list[tuple[int, int]] = []
    for number, row in _atomic_rows(path, ["user_id", "item_id", "timestamp"]):
        try:
            ts = float(row["timestamp"])
        except ValueError:
            raise DataError(
                f"{path}:{number}: timestamp {row['timestamp']!r} is not a number"
            ) from None
        if not math.isfinite(ts):  # inf would reorder the sequence and change its targets
            raise DataError(f"{path}:{number}: timestamp {row['timestamp']!r} is not a finite "
                            f"number")
        user, item = row["user_id"].strip(), row["item_id"].strip()
        if not user or not item:
            raise DataError(f"{path}:{number}: empty user or item id")
        key = (user, item, ts)
        if key in first_seen:  # the same event twice: a copied row, not a second interaction
            duplicates.append((number, first_seen[key]))
            continue
        first_seen[key] = number
        events[user].append((ts, number, item))
        origin.setdefault(user, f"{path}:{number}")
    # Time order; ties keep file order (the line number), so the result is deterministic.
    sequences = {u: [item for _, _, item in sorted(ev)] for u, ev in events.items()}
    sequences = k_core_filter(sequences, k_core)
    notes = []
    if duplicates:
        line, first = duplicates[0]
        notes.append(f"{path}: {len(duplicates)} duplicate row(s) (same user, item and "
                     f"timestamp as an earlier row) dropped, the first at line {line} "
                     f"(a copy of line {first})")
    return RawData(sequences=sequences, origin={u: origin[u] for u in sequences},
                   source=str(path), notes=notes)


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
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object mapping users to item lists")
    sequences = {}
    kinds: dict[str, type] = {}  # item token → the JSON type it was written as
    for user, items in obj.items():
        if not isinstance(items, list):
            raise DataError(f"{path}: user {user!r}: expected a list of items")
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise DataError(f"{path}: user {user!r}: item {json.dumps(item)} is not a "
                                f"string or an integer")
            if kinds.setdefault(str(item), type(item)) is not type(item):
                raise DataError(f"{path}: user {user!r}: item {json.dumps(item)} is also written "
                                f"as {json.dumps(str(item) if isinstance(item, int) else int(item))}"
                                f" elsewhere; write every item id one way")
        sequences[str(user)] = [str(i) for i in items]
    return RawData(sequences=sequences, origin={u: f"{path} (user {u})" for u in sequences},
                   source=str(path))


def read_json(path: Path):
    """A JSON file; bad encoding or syntax is a ``DataError`` naming the line."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None


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


# the files each format reads, by suffix of <data_dir>/<dataset> (a run's input fingerprint)
