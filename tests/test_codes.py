import itertools

import pytest
import torch

from etegrl.codes import CodeTable, CodeTableError, assign_suffixes, reassign_overflow


def test_append_index_suffixes():
    prefix = torch.tensor([[1, 2, 3], [0, 0, 1], [1, 2, 3], [1, 2, 3], [0, 0, 1]])
    codes = assign_suffixes(prefix, code_num=4)
    assert codes[:, 3].tolist() == [0, 0, 1, 2, 1]
    CodeTable(codes, code_num=4)  # unique: does not raise


def test_hash_offset_suffixes_unique_and_shifted():
    prefix = torch.tensor([[1, 2, 3]] * 4 + [[3, 2, 1]] * 2)
    codes = assign_suffixes(prefix, code_num=4, strategy="hash_offset")
    first = codes[:4, 3]
    assert sorted(first.tolist()) == [0, 1, 2, 3]  # 4 items on a 4-code suffix: all used
    offset = int(first[0])
    assert first.tolist() == [(offset + r) % 4 for r in range(4)]  # round robin from the offset
    assert len({tuple(c) for c in codes.tolist()}) == 6
    again = assign_suffixes(prefix, code_num=4, strategy="hash_offset")
    assert torch.equal(codes, again)  # stable across calls (no Python hash randomisation)


def test_overflow_is_an_error():
    prefix = torch.tensor([[0, 1, 1]] * 5)
    with pytest.raises(CodeTableError, match=r"5 items share the code prefix \[0, 1, 1\], but a "
                                             r"suffix has only 4 codes"):
        assign_suffixes(prefix, code_num=4)


def test_reassign_overflow_moves_the_farthest_items():
    prefix = torch.tensor([[0, 1, 1]] * 5)
    # distances to last-level codes 0..3; item 3 is farthest from its code 1, nearest to 2
    dist = torch.tensor([[5., 0.1, 5, 5], [5, 0.2, 5, 5], [5, 0.3, 5, 5], [5, 0.9, 0.5, 5],
                         [5, 0.4, 5, 5]])
    new, moved = reassign_overflow(prefix, dist, code_num=4)
    assert moved == 1 and new[:, 2].tolist() == [1, 1, 1, 2, 1]
    CodeTable(assign_suffixes(new, code_num=4), code_num=4)


def test_duplicate_codes_rejected():
    with pytest.raises(CodeTableError, match=r"items \[1, 3\] share one code"):
        CodeTable(torch.tensor([[0, 1], [1, 1], [0, 1]]), code_num=2)


def test_trie_and_lookup_against_brute_force():
    torch.manual_seed(0)
    codes = assign_suffixes(torch.randint(0, 3, (30, 3)), code_num=8)
    table = CodeTable(codes, code_num=8)
    valid = {tuple(c) for c in codes.tolist()}
    for t in range(4):
        prefixes = [p for p in itertools.product(range(4), repeat=t)]
        allowed = table.allowed(torch.tensor(prefixes, dtype=torch.long).reshape(len(prefixes), t))
        for p, row in zip(prefixes, allowed.tolist()):
            expect = [any(v[:t + 1] == p + (c,) for v in valid) for c in range(8)]
            assert row == expect
    assert table.items_of(codes).tolist() == list(range(1, 31))
    assert table.items_of(torch.tensor([[7, 7, 7, 7]])).tolist() == [0]
    stats = table.stats()
    assert stats["distinct_prefixes"] == len({tuple(c[:3]) for c in codes.tolist()})


def test_trie_on_a_wide_table_with_random_prefixes():
    """Many children per node and prefixes that are mostly invalid, against brute force."""
    torch.manual_seed(3)
    codes = assign_suffixes(torch.randint(0, 16, (400, 3)) // torch.tensor([1, 2, 4]),
                            code_num=16)
    table = CodeTable(codes, code_num=16)
    valid = {tuple(c) for c in codes.tolist()}
    for t in range(4):
        prefixes = torch.cat([codes[torch.randint(0, 400, (50,)), :t],
                              torch.randint(0, 16, (50, t))])
        allowed = table.allowed(prefixes)
        for p, row in zip(prefixes.tolist(), allowed.tolist()):
            expect = [any(v[:t + 1] == tuple(p) + (c,) for v in valid) for c in range(16)]
            assert row == expect


def test_allowed_along_is_allowed_at_each_prefix():
    from etegrl.codes import CodeTable, assign_suffixes
    torch.manual_seed(0)
    table = CodeTable(assign_suffixes(torch.randint(0, 4, (30, 3)), code_num=8), code_num=8)
    codes = table.codes[1:]
    along = table.allowed_along(codes)
    assert along.shape == (30, 4, 8)
    for t in range(4):
        assert torch.equal(along[:, t], table.allowed(codes[:, :t]))
    assert along.gather(2, codes.unsqueeze(-1)).all()  # an item's own codes are always valid
