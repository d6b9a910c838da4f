import pytest
import torch

from etegrl.codes import CodeTable, assign_suffixes
from etegrl.generation import beam_search, sample_items, score_items
from etegrl.model import ETEGRecConfig, ETEGRecModel


def tiny_model(code_num=8, seed=0):
    torch.manual_seed(seed)
    return ETEGRecModel(ETEGRecConfig(code_num=code_num, d_model=32, d_ff=64, num_layers=2,
                                      num_decoder_layers=2, num_heads=2, d_kv=16, e_dim=8,
                                      semantic_dim=8))


@pytest.mark.parametrize("logprob", ["full", "trie"])
def test_beam_search_equals_brute_force(logprob):
    # 15 items on 3×3×3 prefixes: at every level there are fewer valid prefixes than beams,
    # so the beam is exact and must equal scoring every item and sorting.
    torch.manual_seed(1)
    table = CodeTable(assign_suffixes(torch.randint(0, 3, (15, 3)), code_num=8), code_num=8)
    model = tiny_model()
    hist = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0], [6, 7, 8, 9], [15, 0, 0, 0]])
    out = beam_search(model, table, hist, beam=20, logprob=logprob)
    brute = score_items(model, table, hist, torch.arange(1, 16).expand(4, 15), logprob=logprob)
    values, order = brute.topk(15)
    assert torch.equal(out["items"][:, :15], order + 1)
    assert torch.allclose(out["scores"][:, :15], values, atol=1e-5)
    assert torch.all(out["items"][:, 15:] == 0)  # only 15 items exist: the rest is "no item"
    assert torch.equal(table.items_of(out["codes"][:, :15]), out["items"][:, :15])


def test_beam_search_is_batch_independent():
    torch.manual_seed(2)
    table = CodeTable(assign_suffixes(torch.randint(0, 4, (40, 3)), code_num=8), code_num=8)
    model = tiny_model(seed=3)
    hist = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]])
    both = beam_search(model, table, hist, beam=20)
    one = beam_search(model, table, hist[1:, :], beam=20)
    assert torch.equal(both["items"][1], one["items"][0])


def test_sampling_follows_the_model_over_valid_items():
    """Each history's samples read its own encoder keys: the empirical distribution of many
    samples matches the exact item probabilities (teacher-forced, renormalised over the trie)."""
    torch.manual_seed(4)
    table = CodeTable(assign_suffixes(torch.randint(0, 2, (6, 3)), code_num=8), code_num=8)
    model = tiny_model(seed=5)
    hist = torch.tensor([[1, 2, 0], [3, 4, 5]])
    out = sample_items(model, table, hist, n=4000, generator=torch.Generator().manual_seed(0))
    assert out["items"].shape == (2, 4000) and bool((out["items"] > 0).all())
    exact = score_items(model, table, hist, torch.arange(1, 7).expand(2, 6), logprob="trie").exp()
    seen = torch.stack([torch.bincount(row - 1, minlength=6) for row in out["items"]]) / 4000
    torch.testing.assert_close(seen, exact, atol=0.03, rtol=0)


def test_beam_search_leaves_out_excluded_items():
    """With exclusions the beam equals brute force over the other items (exact beam: fewer
    valid prefixes than beams), best first, and never returns an excluded item."""
    torch.manual_seed(1)
    table = CodeTable(assign_suffixes(torch.randint(0, 3, (15, 3)), code_num=8), code_num=8)
    model = tiny_model()
    hist = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0], [6, 7, 8, 9]])
    exclude = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 11, 12, 13], [0, 0, 0, 0, 0]])
    out = beam_search(model, table, hist, beam=20, exclude=exclude)
    brute = score_items(model, table, hist, torch.arange(1, 16).expand(3, 15))
    for row in range(3):
        banned = set(exclude[row].tolist()) - {0}
        keep = [i for i in brute[row].argsort(descending=True).add(1).tolist() if i not in banned]
        assert out["items"][row, :len(keep)].tolist() == keep
        assert torch.all(out["items"][row, len(keep):] == 0)


@pytest.mark.parametrize("logprob", ["full", "trie"])
def test_beam_search_spread_over_first_codes_equals_brute_force(logprob):
    """first_codes=2, beam 8: 4 beams under each of the 2 most likely first codes. With 3 first
    codes and 2 codes at levels 2 and 3, each first code holds at most 4 three-code prefixes, so
    every sub-beam is exact: its items are the best 4 under its first code, merged best first."""
    torch.manual_seed(6)
    levels = torch.stack([torch.randint(0, 3, (30,)), torch.randint(0, 2, (30,)),
                          torch.randint(0, 2, (30,))], 1)
    table = CodeTable(assign_suffixes(levels, code_num=8), code_num=8)
    model = tiny_model(seed=7)
    hist = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0], [6, 7, 8, 9], [30, 0, 0, 0]])
    out = beam_search(model, table, hist, beam=8, logprob=logprob, first_codes=2)
    brute = score_items(model, table, hist, torch.arange(1, 31).expand(4, 30), logprob=logprob)
    firsts = table.codes[1:, 0]
    for row in range(4):
        got = out["items"][row].tolist()
        chosen = sorted({int(table.codes[i, 0]) for i in got})
        assert len(chosen) == 2 and 0 not in got
        expect = []
        for c in chosen:
            under = (firsts == c).nonzero().squeeze(1)
            expect += (under[brute[row, under].argsort(descending=True)[:4]] + 1).tolist()
        expect.sort(key=lambda i: -float(brute[row, i - 1]))
        assert got == expect
        torch.testing.assert_close(out["scores"][row], brute[row, torch.tensor(got) - 1])
        if logprob == "trie":  # the trie renormalises: a first code's mass is its items' sum
            mass = {c: float(brute[row, firsts == c].logsumexp(0)) for c in range(3)}
            assert chosen == sorted(sorted(mass, key=mass.get)[-2:])
    assert torch.equal(table.items_of(out["codes"]), out["items"])
    with pytest.raises(ValueError, match="first_codes must divide the beam"):
        beam_search(model, table, hist, beam=8, first_codes=3)
