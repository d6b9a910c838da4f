"""Leave-one-out splits, the item id map and the processed dataset on disk.

Item ids are 1..n (0 is padding). Per user with sequence s_1..s_m (m ≥ 3):
  test  = (s_1..s_{m-1} → s_m), valid = (s_1..s_{m-2} → s_{m-1}),
  train = every prefix of the training part: (s_1..s_{k-1} → s_k) for k = 2..m-2.
Histories keep their last ``max_len`` items. The split ``train_seq`` holds each user's whole
training part s_1..s_{m-2} untruncated (one row per user, column ``items``) for models that
train on whole sequences (SASRec).

On disk (``save_processed``): ``dataset/`` (a datasets.DatasetDict with train/valid/test and
columns user, history, target), ``items.jsonl`` (id, token, text, tags), ``users.txt`` and
``stats.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .readers import DataError, RawData, natural_key

MIN_INTERACTIONS = 3  # leave-one-out needs one training, one validation and one test item


@dataclass
class Processed:
    """A processed dataset: splits plus the item table. Item id i is ``item_tokens[i-1]``."""

    splits: "datasets.DatasetDict"  # noqa: F821
    item_tokens: list[str]
    item_text: list[str]
    item_tags: list[list[str]]
    users: list[str]
    stats: dict

    @property
    def n_items(self) -> int:
        return len(self.item_tokens)


def item_order(raw: RawData) -> list[str]:
    """The source's own order if it fixes one, numeric order for numeric tokens, else first use."""
    if raw.item_order is not None:
        return list(raw.item_order)
    seen = dict.fromkeys(i for items in raw.sequences.values() for i in items)
    tokens = list(seen)
    if all(t.isdigit() for t in tokens):
        tokens.sort(key=natural_key)
    return tokens


def build_splits(raw: RawData, *, max_len: int = 50) -> Processed:
    import datasets

    if not raw.sequences:
        raise DataError(f"{raw.source}: no users left (after filtering)")
    if max_len < 1:
        raise DataError(f"max_len must be ≥ 1 (history items kept per row), got {max_len}")
    for user, items in raw.sequences.items():
        if "\n" in user or "\r" in user:  # users.txt holds one user id per line
            where = raw.origin.get(user, raw.source)
            raise DataError(f"{where}: user id {user!r} holds a line break")
        if len(items) < MIN_INTERACTIONS:
            where = raw.origin.get(user, raw.source)
            raise DataError(
                f"{where}: user {user!r} has {len(items)} interaction(s); leave-one-out needs "
                f"at least {MIN_INTERACTIONS} (set k_core={MIN_INTERACTIONS} to drop such users)"
            )
    tokens = item_order(raw)
    item_id = {tok: i + 1 for i, tok in enumerate(tokens)}
    users = list(raw.sequences)
    cols = {s: {"user": [], "history": [], "target": []} for s in ("train", "valid", "test")}
    train_seq = {"user": [], "items": []}

    def add(split, uid, seq, k):  # row predicting seq[k] from seq[:k]
        cols[split]["user"].append(uid)
        cols[split]["history"].append(seq[max(0, k - max_len):k])
        cols[split]["target"].append(seq[k])

    for uid, user in enumerate(users):
        seq = [item_id[i] for i in raw.sequences[user]]
        m = len(seq)
        for k in range(1, m - 2):
            add("train", uid, seq, k)
        add("valid", uid, seq, m - 2)
        add("test", uid, seq, m - 1)
        train_seq["user"].append(uid)
        train_seq["items"].append(seq[:m - 2])

    features = datasets.Features({
        "user": datasets.Value("int32"),
        "history": datasets.Sequence(datasets.Value("int32")),
        "target": datasets.Value("int32"),
    })
    splits = datasets.DatasetDict(
        {s: datasets.Dataset.from_dict(c, features=features) for s, c in cols.items()})
    splits["train_seq"] = datasets.Dataset.from_dict(train_seq, features=datasets.Features({
        "user": datasets.Value("int32"), "items": datasets.Sequence(datasets.Value("int32"))}))
    text = [raw.item_text.get(t, "") for t in tokens]
    tags = [list(raw.item_tags.get(t, [])) for t in tokens]
    stats = compute_stats(raw, tokens, cols, text, max_len)
    return Processed(splits, tokens, text, tags, users, stats)


def repeat_rate(splits) -> float:
    """Share of training rows whose target is already in its history: 0 on data where a user
    meets an item once (ratings), above 0 where items come back (purchases, listens)."""
    train = splits["train"]
    hits = sum(t in set(h) for h, t in zip(train["history"], train["target"]))
    return hits / max(1, len(train))


def exclude_history(mode: str, splits) -> bool:
    """Whether recommendations leave out the user's history items: ``always``, ``never``, or
    ``auto`` = when no training target repeats an item of its own history."""
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"exclude_history must be auto, always or never, not {mode!r}")
    return mode == "always" or (mode == "auto" and repeat_rate(splits) == 0.0)


def item_counts(splits, n_items: int) -> np.ndarray:
    """How often each item occurs in the training sequences → ``[n_items + 1]`` (index = item
    id, 0 unused): the popularity behind the most-popular baseline."""
    items = [i for seq in splits["train_seq"]["items"] for i in seq]
    return np.bincount(np.asarray(items, dtype=np.int64), minlength=n_items + 1)


def write_topk(path: str | Path, users, targets, ranked) -> None:
    """One JSON line per user: ``{"user", "target", "ranked": [item ids, best first]}`` (ids as
    in ``items.jsonl``), enough to recompute every metric."""
    with open(path, "w", encoding="utf-8") as fh:
        for user, target, items in zip(users, targets, ranked):
            fh.write(json.dumps({"user": int(user), "target": int(target),
                                 "ranked": [int(i) for i in items if int(i) > 0]}) + "\n")


def read_topk(path: str | Path) -> dict[int, tuple[int, list[int]]]:
    """``write_topk``'s file → {user: (target, ranked)}."""
    out = {}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            try:
                obj = json.loads(line)
                out[int(obj["user"])] = (int(obj["target"]), [int(i) for i in obj["ranked"]])
            except (ValueError, KeyError, TypeError) as err:
                raise DataError(f"{path}:{number}: not a ranked-list line ({err})") from None
    return out


def compute_stats(raw, tokens, cols, text, max_len) -> dict:
    lengths = np.array([len(s) for s in raw.sequences.values()])
    train_items = set(cols["train"]["target"]) | {
        i for h in cols["valid"]["history"] for i in h}
    n_users, n_items, n_inter = len(lengths), len(tokens), int(lengths.sum())
    return {
        "source": raw.source,
        "users": n_users,
        "items": n_items,
        "interactions": n_inter,
        "items_in_train": len(train_items),
        "density": n_inter / (n_users * n_items),
        "sequence_length": {"mean": float(lengths.mean()), "median": float(np.median(lengths)),
                            "min": int(lengths.min()), "max": int(lengths.max())},
        "rows": {s: len(c["target"]) for s, c in cols.items()},
        "max_len": max_len,
        "items_with_text": sum(1 for t in text if t),
    }


def save_processed(p: Processed, out_dir: str | Path) -> None:
    import datasets

    datasets.disable_progress_bars()  # a bar per split for a sub-second write is noise
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p.splits.save_to_disk(str(out / "dataset"))
    with open(out / "items.jsonl", "w", encoding="utf-8") as fh:
        for i, (tok, text, tags) in enumerate(zip(p.item_tokens, p.item_text, p.item_tags), 1):
            fh.write(json.dumps({"id": i, "token": tok, "text": text, "tags": tags},
                                ensure_ascii=False) + "\n")
    with open(out / "users.txt", "w", encoding="utf-8", newline="") as fh:
        fh.write("".join(u + "\n" for u in p.users))
    (out / "stats.json").write_text(json.dumps(p.stats, indent=2))


def load_processed(data_dir: str | Path) -> Processed:
    import datasets

    d = Path(data_dir)
    if not (d / "stats.json").is_file():
        raise DataError(f"{d}: no processed dataset here (run the prepare step first)")
    splits = datasets.load_from_disk(str(d / "dataset"))
    tokens, text, tags = [], [], []
    with open(d / "items.jsonl", encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            obj = json.loads(line)
            if obj["id"] != number:
                raise DataError(f"{d / 'items.jsonl'}:{number}: item ids must run 1, 2, 3, ...")
            tokens.append(obj["token"])
            text.append(obj["text"])
            tags.append(obj["tags"])
    # one id per "\n"-ended line, read back exactly: not str.splitlines, which also splits at
    # \x0b, \x0c, \x1c-\x1e, \x85, U+2028 and U+2029 inside an id
    with open(d / "users.txt", encoding="utf-8", newline="") as fh:
        users = fh.read().split("\n")[:-1]
    stats = json.loads((d / "stats.json").read_text())
    return Processed(splits, tokens, text, tags, users, stats)


def future_items(splits, n: int) -> list[list[int]]:
    """For every training row, the user's next ``n`` training items after its target (nearest
    first; the validation and test items are never among them). Training rows run, per user,
    through the prefixes of the user's training sequence in order (``etegrl.data.split``)."""
    seqs = dict(zip(splits["train_seq"]["user"], splits["train_seq"]["items"]))
    train = splits["train"]
    out, position, last_user = [], 0, None
    for user, target in zip(train["user"], train["target"]):
        position = position + 1 if user == last_user else 1
        last_user = user
        seq = seqs[user]
        if position >= len(seq) or seq[position] != target:
            raise DataError(f"training rows of user {user} are not the prefixes of its training "
                            f"sequence in order (a dataset written by another version?)")
        out.append(list(seq[position + 1:position + 1 + n]))
    return out
