"""Data preparation: read a source, split leave-one-out, build the item embeddings.

    python -m etegrl.prepare --config configs/ml-100k/prepare.yaml [key=value ...]

Writes to ``output_dir``: the processed dataset (see ``etegrl.data.split``), ``embeddings/``
(``sasrec``, ``text``, ``tags``, ``file`` parts as chosen, and ``semantic.safetensors``, their
concatenation for the tokenizer), the SASRec baseline's ``sasrec_results.json`` and the
resolved ``prepare_config.yaml``. A finished output directory with the same config is reused;
one holding a different config is an error unless ``overwrite=true``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from transformers import set_seed

from .config import parse_args, require
from .data import (build_splits, exclude_history, item_counts, load_processed,
                   pad_histories, read_source, save_processed, source_files, write_topk)
from .distributed import set_threads
from .errors import EtegrlError
from .malloc import keep_freed_memory
from .metrics import list_metrics, most_popular
from .embeddings import (PARTS, EmbeddingError, concat_parts, load_feature_file, save_embedding,
                         tag_features)
from .embeddings.sasrec import SASRecConfig, train_sasrec
from .embeddings.text import encode_texts
from .runs import OutputLock, claim_output, input_fingerprints, mark_done

@dataclass
class DataConfig:
    format: Literal["movielens_100k", "recbole_inter", "recbole_split", "etegrec_jsonl",
                    "sequence_txt", "json_sequences"] = field(
        default="movielens_100k", metadata={"help": (
            "Source format: movielens_100k (from the installed recbole wheel), recbole_inter "
            "(raw <dataset>.inter + optional .item/.text), recbole_split (<dataset>.{train,valid,"
            "test}.inter + .item2index/.text), etegrec_jsonl (<dataset>.{train,valid,test}.jsonl "
            "+ <dataset>.emb_map.json), sequence_txt ('user item item ...' lines; dataset = file "
            "name), json_sequences ({user: [items]}; dataset = file name).")})
    data_dir: str = field(default="", metadata={"help": "Folder holding the source files."})
    dataset: str = field(default="", metadata={"help": "File stem (or file name) of the source inside data_dir."})
    output_dir: str = field(default="runs/ml-100k/data", metadata={"help": "Where the processed dataset and embeddings go."})
    k_core: int = field(default=0, metadata={"help": "Drop users/items with fewer interactions, repeatedly (0/1 = off)."})
    max_len: int = field(default=50, metadata={"help": "Keep the last max_len items of each history."})
    text_fields: list[str] = field(default_factory=list, metadata={"help": "Item-file fields joined into item text (empty = all but the id)."})
    tag_fields: list[str] = field(default_factory=list, metadata={"help": "Item-file fields whose space-separated tokens are tags (genres, categories)."})


@dataclass
class EmbeddingConfig:
    semantic_parts: list[str] = field(default_factory=lambda: ["sasrec"], metadata={"help": (
        "Parts of the tokenizer's input, concatenated in this order: sasrec, text, tags, file. "
        "[sasrec, text] is Dual SCID.")})
    part_norm: Literal["none", "l2"] = field(default="none", metadata={"help": "Scale each part to unit length per item before concatenating (l2) or not (none)."})
    feature_file: str = field(default="", metadata={"help": "A [n_items, d] .npy/.safetensors matrix in item-id order, for the 'file' part."})
    text_model: str = field(default="", metadata={"help": "Local sentence-transformers model directory (empty = bundled all-MiniLM-L6-v2)."})
    text_batch_size: int = field(default=64, metadata={"help": "Texts per encoder batch."})


@dataclass
class PrepareConfig(SASRecConfig, EmbeddingConfig, DataConfig):
    seed: int = field(default=42, metadata={"help": "Random seed."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an output_dir that holds another or a finished run."})
    threads: int = field(default=0, metadata={"help": "CPU threads (0 = the machine's cores divided among the processes on it)."})
    exclude_history: Literal["auto", "always", "never"] = field(default="auto", metadata={"help": "Baselines (SASRec, most popular) never recommend an item already in the user's history: always, never, or auto = when no training target repeats an item of its own history. The later stages' option of the same name follows the same rule."})

    def __post_init__(self):
        require(self, 1, "max_len", "text_batch_size", "sasrec_hidden", "sasrec_layers",
                "sasrec_heads", "sasrec_batch_size", "sasrec_eval_batch_size")
        require(self, 0, "k_core", "threads", "sasrec_epochs", "sasrec_patience",
                "sasrec_weight_decay")
        require(self, 0, "sasrec_lr", above=True)
        require(self, 0, "sasrec_dropout", high=1, below_high=True)
        unknown = [p for p in self.semantic_parts if p not in PARTS]
        if unknown or not self.semantic_parts:
            raise ValueError(f"semantic_parts: {unknown or '[]'} not valid; choose from {PARTS}")
        if "file" in self.semantic_parts and not self.feature_file:
            raise ValueError("semantic_parts has 'file' but feature_file is empty")
        if "sasrec" in self.semantic_parts and self.sasrec_epochs <= 0:
            raise ValueError("semantic_parts has 'sasrec' but sasrec_epochs is 0")


def unseen(items: list[int], seen: set[int]) -> list[int]:
    return [i for i in items if i not in seen]


def baseline_report(data, out: Path, name: str, ranking: str, lists, log=print,
                    exclude: bool = False) -> dict:
    """A baseline's metrics on both splits from ``lists(rows)`` (each row's top 20 item ids,
    0 = no item), its test lists in ``<name>_test_topk.jsonl``."""
    order = most_popular(item_counts(data.splits, data.n_items), data.n_items)
    report = {"ranking": ranking, "exclude_history": exclude}
    for split in ("valid", "test"):
        rows = data.splits[split]
        top = lists(rows)
        report[split] = list_metrics(top, torch.as_tensor(rows["target"]), n_items=data.n_items,
                                     histories=rows["history"], popular=order[:10])
    write_topk(out / f"{name}_test_topk.jsonl", data.splits["test"]["user"],
               data.splits["test"]["target"], top.tolist())
    t = report["test"]
    log(f"{name.replace('_', ' ')} test: recall@10 {t['recall@10']:.4f} ndcg@10 "
        f"{t['ndcg@10']:.4f}")
    return report


def most_popular_baseline(data, out: Path, log=print, exclude: bool = False) -> dict:
    """The floor every model is judged against: items by their training counts (ties by lower
    item id), the same list for every user — less each user's history items when ``exclude``.
    Metrics of both splits, the test lists in ``most_popular_test_topk.jsonl``."""
    order = most_popular(item_counts(data.splits, data.n_items), data.n_items)

    def lists(rows):
        if not exclude:
            return order[:20].expand(len(rows), -1)
        # the first 20 + len(history) items always hold 20 the user has not seen
        kept = [unseen(order[:20 + len(h)].tolist(), set(h))[:20] for h in rows["history"]]
        width = max(len(x) for x in kept)  # < 20 in a catalogue under 20 + history items
        return torch.tensor([x + [0] * (width - len(x)) for x in kept])  # 0: no item

    return baseline_report(data, out, "most_popular", "training counts, ties by item id", lists,
                           log, exclude)


def transitions_baseline(data, out: Path, log=print, exclude: bool = False) -> dict:
    """A second reference beside SASRec that needs no training: the ``transitions`` teacher
    (item-to-item transition counts of the training sequences, its default settings) ranks
    every item for each history — history items dropped when ``exclude``; ties by lower item
    id. Metrics of both splits, the test lists in ``transitions_test_topk.jsonl``."""
    from .teacher import TransitionTeacher

    teacher = TransitionTeacher(data.splits["train_seq"]["items"], data.n_items)

    def lists(rows):
        tops = []
        for start in range(0, len(rows), 1024):
            scores = teacher.scores(pad_histories(rows["history"][start:start + 1024]),
                                    exclude=exclude)
            top = torch.sort(-scores, dim=1, stable=True).indices[:, :20]
            # −inf (column 0, excluded history items) sorts last: no item there
            tops.append(torch.where(torch.isinf(scores.gather(1, top)), 0, top))
        return torch.cat(tops)

    ranking = (f"item-to-item transition counts of the training sequences (window "
               f"{teacher.window}, backward weight {teacher.backward}, the last {teacher.history} "
               f"history items; ties by item id)")
    return baseline_report(data, out, "transitions", ranking, lists, log, exclude)


def prepare_inputs(cfg: PrepareConfig) -> dict[str, str]:
    """Fingerprints of what the prepare step reads: the source files, a feature file, a local
    text model."""
    paths = source_files(cfg.format, data_dir=cfg.data_dir, dataset=cfg.dataset)
    paths += [p for p in (cfg.feature_file, cfg.text_model) if p and Path(p).exists()]
    return input_fingerprints(paths)


def run(cfg: PrepareConfig, log=print) -> dict:
    """Prepare ``cfg.output_dir``, owning it (a lock) while it runs."""
    with OutputLock(cfg.output_dir):
        return _run(cfg, log)


def _run(cfg: PrepareConfig, log=print) -> dict:
    out = Path(cfg.output_dir)
    if claim_output(cfg, out, "prepare", prepare_inputs(cfg), log=log):
        log(f"{out}: already prepared with this config and these source files; nothing to do "
            f"(overwrite=true redoes it)")
        return json.loads((out / "summary.json").read_text())
    set_seed(cfg.seed)
    set_threads(cfg.threads)
    keep_freed_memory()
    from accelerate import PartialState

    device = PartialState().device
    t0 = time.perf_counter()
    raw = read_source(cfg.format, data_dir=cfg.data_dir, dataset=cfg.dataset, k_core=cfg.k_core,
                      text_fields=cfg.text_fields or None, tag_fields=cfg.tag_fields)
    for note in raw.notes:
        log(f"warning: {note}")
    data = build_splits(raw, max_len=cfg.max_len)
    save_processed(data, out)
    data = load_processed(out)  # train from what is on disk, as every later stage will
    s = data.stats
    log(f"data: {s['users']} users, {s['items']} items, {s['interactions']} interactions "
        f"({s['items_in_train']} items in train); rows train {s['rows']['train']} / valid "
        f"{s['rows']['valid']} / test {s['rows']['test']}; {time.perf_counter() - t0:.1f}s")

    parts: dict[str, torch.Tensor] = {}
    exclude = exclude_history(cfg.exclude_history, data.splits)
    summary = {"stats": s, "exclude_history": exclude, "device": str(device),
               "most_popular": most_popular_baseline(data, out, log, exclude=exclude),
               "transitions": transitions_baseline(data, out, log, exclude=exclude)}
    emb_dir = out / "embeddings"
    if cfg.sasrec_epochs > 0:
        model, report = train_sasrec(data, cfg, max_len=cfg.max_len, seed=cfg.seed,
                                     device=device, log=log, exclude=exclude)
        write_topk(out / "sasrec_test_topk.jsonl", data.splits["test"]["user"],
                   data.splits["test"]["target"], report.pop("test_lists"))
        parts["sasrec"] = model.item_vectors().cpu()
        save_embedding(parts["sasrec"], emb_dir / "sasrec.safetensors", part="sasrec")
        save_file(model.state_dict(), str(out / "sasrec_model.safetensors"))
        (out / "sasrec_results.json").write_text(json.dumps(report, indent=2))
        summary["sasrec"] = {k: report[k] for k in ("best_epoch", "train_seconds", "valid", "test")}
        t = report["test"]
        log(f"SASRec test (leave-one-out, full ranking over {data.n_items} items): "
            f"recall@1 {t['recall@1']:.4f} recall@5 {t['recall@5']:.4f} recall@10 "
            f"{t['recall@10']:.4f} ndcg@5 {t['ndcg@5']:.4f} ndcg@10 {t['ndcg@10']:.4f} "
            f"coverage@10 {t['coverage@10']:.4f}; best epoch {report['best_epoch']}, "
            f"{report['train_seconds']:.1f}s")
    if "text" in cfg.semantic_parts:
        missing = sum(1 for t in data.item_text if not t)
        if missing == len(data.item_text):
            raise EmbeddingError(f"semantic part 'text': no item text in {raw.source}")
        vectors = encode_texts(data.item_text, model_path=cfg.text_model,
                               batch_size=cfg.text_batch_size, device=str(device))
        parts["text"] = torch.cat([torch.zeros(1, vectors.shape[1]), vectors])
        save_embedding(parts["text"], emb_dir / "text.safetensors", part="text")
        log(f"text: {vectors.shape[1]}-d embeddings of {len(data.item_text)} items "
            f"({missing} without text)")
    if "tags" in cfg.semantic_parts:
        parts["tags"], vocab = tag_features(data.item_tags)
        save_embedding(parts["tags"], emb_dir / "tags.safetensors", part="tags",
                       vocabulary=json.dumps(vocab))
    if "file" in cfg.semantic_parts:
        parts["file"] = load_feature_file(cfg.feature_file, data.n_items)
    semantic = concat_parts(parts, cfg.semantic_parts, data.n_items, cfg.part_norm)
    save_embedding(semantic, emb_dir / "semantic.safetensors",
                   parts=",".join(cfg.semantic_parts), part_norm=cfg.part_norm)
    dims = {p: int(parts[p].shape[1]) for p in cfg.semantic_parts}
    summary["semantic"] = {"parts": dims, "dim": int(semantic.shape[1]),
                           "part_norm": cfg.part_norm}
    summary["seconds"] = time.perf_counter() - t0
    log(f"semantic embedding: {semantic.shape[1]}-d from {dims}; done in {summary['seconds']:.1f}s")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    mark_done(out)
    return summary


def main(argv: list[str] | None = None) -> int:
    from accelerate import PartialState

    # Preparation is one process's work (it writes one output directory); under
    # `accelerate launch --num_processes N` the other processes leave at once.
    if not PartialState().is_main_process:
        return 0
    try:
        cfg = parse_args(PrepareConfig, argv, prog="python -m etegrl.prepare")
        run(cfg)
    except EtegrlError as err:  # bad input of any kind: one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
