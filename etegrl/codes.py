"""The item → code table, its inverse, and the trie of valid code prefixes — all tensors.

An item's code is its tokenizer prefix (``levels`` codes) plus one collision suffix that makes
it unique. Codes are packed into one int64 key (base ``code_num``), so the trie at depth t is
the sorted set of keys of all valid t+1-code prefixes, and "which next codes are valid after
these prefixes" is one ``searchsorted`` over ``[batch, code_num]`` candidates — no Python dict
walked per beam.
"""

from __future__ import annotations

import hashlib

import torch

from .errors import EtegrlError


class CodeTableError(EtegrlError):
    """A code table that cannot be made unique (more items on a prefix than suffix codes)."""


def _prefix_keys(prefix: torch.Tensor, code_num: int) -> torch.Tensor:
    key = torch.zeros(prefix.shape[0], dtype=torch.long, device=prefix.device)
    for level in range(prefix.shape[1]):
        key = key * code_num + prefix[:, level].long()
    return key


def _stable_hash(key: int) -> int:
    return int.from_bytes(hashlib.blake2b(str(key).encode(), digest_size=8).digest(), "little")


def assign_suffixes(prefix: torch.Tensor, *, code_num: int = 256,
                    strategy: str = "append_index") -> torch.Tensor:
    """Item codes ``[N, levels + 1]`` for item prefixes ``[N, levels]`` (row i = item i + 1).

    append_index: the suffix is the item's index among the items sharing its prefix (item-id
    order), as in ETEGRec/TIGER. hash_offset (FORGE): the same index shifted by a stable hash of
    the prefix, modulo ``code_num``, so suffix 0 is not always the most used one.
    More than ``code_num`` items on one prefix raises ``CodeTableError``.
    """
    keys = _prefix_keys(prefix, code_num)
    order = torch.sort(keys, stable=True).indices
    sorted_keys = keys[order]
    uniq, counts = torch.unique_consecutive(sorted_keys, return_counts=True)
    if counts.numel() and int(counts.max()) > code_num:
        worst = int(counts.argmax())
        codes = []
        k = int(uniq[worst])
        for _ in range(prefix.shape[1]):
            codes.append(k % code_num)
            k //= code_num
        raise CodeTableError(
            f"{int(counts.max())} items share the code prefix {codes[::-1]}, but a suffix has only "
            f"{code_num} codes; train the tokenizer longer, use more levels or a larger code_num")
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    rank_sorted = torch.arange(len(keys), device=keys.device) - starts
    rank = torch.empty_like(rank_sorted)
    rank[order] = rank_sorted
    if strategy == "append_index":
        suffix = rank
    elif strategy == "hash_offset":
        offsets = torch.tensor([_stable_hash(int(k)) % code_num for k in uniq.tolist()],
                               dtype=torch.long, device=keys.device)
        group = torch.repeat_interleave(torch.arange(len(uniq), device=keys.device), counts)
        offset = torch.empty_like(rank)
        offset[order] = offsets[group]
        suffix = (offset + rank) % code_num
    else:
        raise ValueError(f"unknown collision strategy {strategy!r}: append_index or hash_offset")
    return torch.cat([prefix.long(), suffix.unsqueeze(1)], dim=1)


def reassign_overflow(prefix: torch.Tensor, last_distances: torch.Tensor, *,
                      code_num: int = 256) -> tuple[torch.Tensor, int]:
    """Move the items beyond ``code_num`` on a prefix to their nearest last-level code whose
    prefix still has room → (new prefix, number of items moved).

    ``last_distances [N, code_num]`` are each item's distances to the last level's codes. Only
    overflowing prefixes are visited (rare outside a collapsed tokenizer), so the loop is short.
    """
    prefix = prefix.clone()
    keys = _prefix_keys(prefix, code_num)
    uniq, counts = torch.unique(keys, return_counts=True)
    over = uniq[counts > code_num]
    if over.numel() == 0:
        return prefix, 0
    count = dict(zip(uniq.tolist(), counts.tolist()))
    moved = 0
    for key in over.tolist():
        members = (keys == key).nonzero().flatten()
        # keep the code_num items closest to the shared code; move the rest
        own = last_distances[members, prefix[members, -1]]
        excess = members[own.argsort(descending=True)[:count[key] - code_num]]
        for item in excess.tolist():
            parent = int(keys[item]) - int(prefix[item, -1])
            for code in last_distances[item].argsort().tolist():
                if count.get(parent + code, 0) < code_num:
                    count[key] -= 1
                    count[parent + code] = count.get(parent + code, 0) + 1
                    prefix[item, -1] = code
                    moved += 1
                    break
            else:
                raise CodeTableError("no free code prefix left for an item: the catalogue "
                                     "needs more levels or a larger code_num")
    return prefix, moved


class CodeTable:
    """Item codes with the inverse lookup and the trie, for items 1..N (row 0 = padding)."""

    def __init__(self, item_codes: torch.Tensor, code_num: int = 256):
        codes = item_codes.long()
        if codes.ndim != 2:
            raise CodeTableError("item codes must be [n_items, code_len]")
        self.code_num, self.code_len = code_num, codes.shape[1]
        self.codes = torch.cat([torch.zeros(1, self.code_len, dtype=torch.long), codes.cpu()])
        keys = _prefix_keys(codes.cpu(), code_num)
        sorted_keys, order = torch.sort(keys)
        if len(sorted_keys) > 1 and bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
            dup = int(sorted_keys[1:][sorted_keys[1:] == sorted_keys[:-1]][0])
            items = (order[keys[order] == dup] + 1).tolist()
            raise CodeTableError(f"items {items} share one code: the table is not unique")
        self.full_keys, self.key_items = sorted_keys, order + 1
        # trie[t]: sorted keys of every valid (t+1)-code prefix
        self.trie = [torch.unique(_prefix_keys(codes.cpu()[:, :t + 1], code_num))
                     for t in range(self.code_len)]
        # The children of node i of trie[t - 1] are trie[t][child_lo[t][i]:child_hi[t][i]]
        # (sorted keys, so a parent's children are contiguous); fanout[t] is the most any
        # node has. allowed() reads these ranges: one search per prefix, not one per code.
        self.child_lo, self.child_hi = [None], [None]
        self.fanout = [len(self.trie[0])]
        for t in range(1, self.code_len):
            parents = self.trie[t] // code_num
            self.child_lo.append(torch.searchsorted(parents, self.trie[t - 1]))
            self.child_hi.append(torch.searchsorted(parents, self.trie[t - 1], right=True))
            counts = self.child_hi[t] - self.child_lo[t]
            self.fanout.append(int(counts.max()) if counts.numel() else 0)
        self.root_allowed = torch.zeros(code_num, dtype=torch.bool)
        self.root_allowed[self.trie[0]] = True

    @property
    def n_items(self) -> int:
        return self.codes.shape[0] - 1

    def to(self, device) -> "CodeTable":
        self.codes = self.codes.to(device)
        self.full_keys, self.key_items = self.full_keys.to(device), self.key_items.to(device)
        self.trie = [t.to(device) for t in self.trie]
        self.child_lo = [None] + [t.to(device) for t in self.child_lo[1:]]
        self.child_hi = [None] + [t.to(device) for t in self.child_hi[1:]]
        self.root_allowed = self.root_allowed.to(device)
        return self

    def allowed(self, prefix: torch.Tensor) -> torch.Tensor:
        """Boolean ``[B, code_num]``: which next codes extend the ``[B, t]`` prefixes validly."""
        rows, t = prefix.shape
        if t == 0:
            return self.root_allowed.expand(rows, -1).clone()
        keys, parents = _prefix_keys(prefix, self.code_num), self.trie[t - 1]
        if len(parents) == 0:  # an empty table: nothing is valid
            return torch.zeros(rows, self.code_num, dtype=torch.bool, device=prefix.device)
        node = torch.searchsorted(parents, keys).clamp(max=len(parents) - 1)
        found = parents[node] == keys  # an invalid prefix has no children
        lo = self.child_lo[t][node]
        hi = torch.where(found, self.child_hi[t][node], lo)
        slot = lo.unsqueeze(1) + torch.arange(self.fanout[t], device=prefix.device)
        level = self.trie[t]
        code = level[slot.clamp(max=len(level) - 1)] % self.code_num
        # slots past a node's last child repeat its first child's code (still a valid one)
        code = torch.where(slot < hi.unsqueeze(1), code, code[:, :1])
        out = torch.zeros(rows, self.code_num, dtype=torch.bool, device=prefix.device)
        out.scatter_(1, code, True)
        return out & (hi > lo).unsqueeze(1)

    def allowed_along(self, codes: torch.Tensor) -> torch.Tensor:
        """Valid codes at every position of full codes ``[N, code_len]`` → bool ``[N, code_len,
        code_num]``: position t allows the codes that extend ``codes[:, :t]`` (the mask of a
        cross-entropy over valid codes only)."""
        return torch.stack([self.allowed(codes[:, :t]) for t in range(codes.shape[1])], 1)

    def items_of(self, codes: torch.Tensor) -> torch.Tensor:
        """Item ids of full codes ``[..., code_len]``; 0 where a code is no item."""
        flat = codes.reshape(-1, self.code_len)
        keys = _prefix_keys(flat, self.code_num)
        pos = torch.searchsorted(self.full_keys, keys).clamp(max=len(self.full_keys) - 1)
        found = self.full_keys[pos] == keys
        return torch.where(found, self.key_items[pos], 0).reshape(codes.shape[:-1])

    def stats(self) -> dict:
        """Codebook usage per level and collisions (items that needed a suffix > 0 of a shared
        prefix): a tokenizer health check."""
        c = self.codes[1:]
        prefix_keys = _prefix_keys(c[:, :-1], self.code_num)
        _, counts = torch.unique(prefix_keys, return_counts=True)
        return {
            "usage_per_level": [int(torch.unique(c[:, i]).numel()) for i in range(self.code_len)],
            "distinct_prefixes": int(counts.numel()),
            "colliding_items": int((counts[counts > 1]).sum()),
            "max_items_per_prefix": int(counts.max()) if counts.numel() else 0,
        }
