"""Data: source readers → one in-memory form → leave-one-out splits → datasets on disk."""

from .batching import capped_row_indices, length_bucketed_batches, pad_histories
from .readers import DataError, RawData
from .sources import read_source, source_files
from .split import (Processed, build_splits, exclude_history, future_items, item_counts,
                    load_processed, read_topk, repeat_rate, save_processed, write_topk)

__all__ = [
    "DataError", "RawData", "read_source", "source_files", "Processed", "build_splits", "load_processed",
    "save_processed", "exclude_history", "future_items", "repeat_rate", "item_counts", "read_topk", "write_topk",
    "capped_row_indices", "length_bucketed_batches", "pad_histories",
]
