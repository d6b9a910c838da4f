"""Source formats by name (the ``format`` option of the data config): which files each
reads (``source_files``, for the run's input fingerprints) and the reader that turns them into
``RawData`` (``read_source``). Kept apart from the readers so that ``readers`` and ``presplit``
do not import each other."""

from __future__ import annotations

from pathlib import Path

from .presplit import read_etegrec_jsonl, read_recbole_split
from .readers import (DataError, RawData, k_core_filter, movielens_100k_files, read_item_file,
                      read_json_sequences, read_recbole_inter, read_sequence_file, read_text_file)

SOURCE_SUFFIXES = {
    "recbole_inter": (".inter", ".item", ".text"),
    "recbole_split": (".train.inter", ".valid.inter", ".test.inter", ".item2index", ".text"),
    "etegrec_jsonl": (".train.jsonl", ".valid.jsonl", ".test.jsonl", ".emb_map.json"),
}


def source_files(fmt: str, *, data_dir: str = "", dataset: str = "") -> list[Path]:
    """The existing files that ``read_source`` with these options reads."""
    base = Path(data_dir) / dataset if dataset else Path(data_dir)
    if fmt == "movielens_100k":
        candidates = list(movielens_100k_files().values())
    elif fmt in SOURCE_SUFFIXES:
        candidates = [Path(f"{base}{suffix}") for suffix in SOURCE_SUFFIXES[fmt]]
    elif fmt == "sequence_txt":
        candidates = [base if base.suffix else Path(data_dir) / "user_sequence.txt"]
    else:
        candidates = [base]
    return [c for c in candidates if c.is_file()]


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
