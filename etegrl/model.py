"""The recommender: transformers' T5 over item codes, as a ``PreTrainedModel``.

A history of items becomes ``len × code_len`` tokens; token j of an item is embedded with code
table j (one ``Embedding(code_num, d_model)`` per code position). The decoder starts from a
learned BOS vector, reads the target's codes with the same tables and scores code t with the
decoder state t times table t's weights (tied input/output). Adapters for ETEGRec's losses:
SIA maps the mean-pooled encoder output to the tokenizer's latent size, PSA maps the decoder's
BOS state to the semantic-embedding size.
"""

from __future__ import annotations

import torch
from torch import nn
import copy

from transformers import PretrainedConfig, PreTrainedModel, T5Config
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.models.t5.modeling_t5 import T5Stack

from etegrl import fast_dropout
from etegrl.attention import ATTENTION
from etegrl.norm import use_fused_norm


class ETEGRecConfig(PretrainedConfig):
    model_type = "etegrec"

    def __init__(self, code_num: int = 256, code_len: int = 4, d_model: int = 128,
                 d_ff: int = 512, num_layers: int = 6, num_decoder_layers: int = 6,
                 num_heads: int = 4, d_kv: int = 64, dropout_rate: float = 0.1,
                 e_dim: int = 128, semantic_dim: int = 256, initializer_range: float = 0.02,
                 feed_forward_proj: str = "relu", causal_encoder: bool = False, **kwargs):
        super().__init__(**kwargs)
        # causal_encoder: each history token attends only to tokens of its own and earlier
        # items, so one encoder pass serves a prediction after every item (forward_sequence)
        self.causal_encoder = causal_encoder
        self.code_num, self.code_len = code_num, code_len
        self.d_model, self.d_ff, self.num_layers = d_model, d_ff, num_layers
        self.num_decoder_layers, self.num_heads, self.d_kv = num_decoder_layers, num_heads, d_kv
        self.dropout_rate, self.e_dim, self.semantic_dim = dropout_rate, e_dim, semantic_dim
        self.initializer_range, self.feed_forward_proj = initializer_range, feed_forward_proj

    def t5_config(self) -> T5Config:
        # The T5 stacks never see token ids (we pass embeddings): a 1-row vocabulary.
        return T5Config(vocab_size=1, d_model=self.d_model, d_ff=self.d_ff, d_kv=self.d_kv,
                        num_layers=self.num_layers, num_decoder_layers=self.num_decoder_layers,
                        num_heads=self.num_heads, dropout_rate=self.dropout_rate,
                        feed_forward_proj=self.feed_forward_proj, pad_token_id=0,
                        eos_token_id=0, decoder_start_token_id=0, use_cache=True,
                        attn_implementation=ATTENTION)


class ETEGRecModel(PreTrainedModel):
    config_class = ETEGRecConfig
    base_model_prefix = "etegrec"
    _supports_sdpa = True

    def __init__(self, config: ETEGRecConfig):
        super().__init__(config)
        self.code_embeddings = nn.ModuleList(
            [nn.Embedding(config.code_num, config.d_model) for _ in range(config.code_len)])
        self.bos = nn.Parameter(torch.zeros(config.d_model))
        t5 = config.t5_config()
        dec = copy.deepcopy(t5)
        dec.is_decoder, dec.num_layers = True, config.num_decoder_layers
        t5.is_decoder, t5.use_cache = False, False
        self.encoder, self.decoder = T5Stack(t5), T5Stack(dec)
        fast_dropout.use_fast_dropout(self)
        use_fused_norm(self)
        # The stacks only ever get embeddings (per-position code tables below), so their own
        # token tables are dropped rather than left as untrained parameters.
        self.encoder.embed_tokens = None
        self.decoder.embed_tokens = None
        self.sia_adapter = nn.Linear(config.d_model, config.e_dim)
        self.psa_adapter = nn.Linear(config.d_model, config.semantic_dim)
        self.post_init()

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, ETEGRecModel):
            nn.init.normal_(module.bos, mean=0.0, std=std)
        elif hasattr(module, "weight") and module.__class__.__name__.endswith("LayerNorm"):
            nn.init.ones_(module.weight)

    # ---- embeddings -------------------------------------------------------------------
    def _table(self) -> torch.Tensor:
        return torch.stack([e.weight for e in self.code_embeddings])  # [code_len, code_num, d]

    def lookup(self, positions: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Embeddings of ``codes`` through the tables of their code ``positions`` (broadcast).
        One ``F.embedding`` over the stacked tables: indexing them instead (``table[pos,
        codes]``) has a backward that accumulates with atomics on a multi-threaded CPU, so two
        runs of one seed gave different weights."""
        flat = self._table().reshape(-1, self.config.d_model)
        return nn.functional.embedding(positions * self.config.code_num + codes, flat)

    def embed_history(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, L*code_len]`` codes → embeddings, token j of each item through table j."""
        position = torch.arange(tokens.shape[1], device=tokens.device) % self.config.code_len
        return self.lookup(position.unsqueeze(0), tokens)

    def decoder_inputs(self, codes: torch.Tensor) -> torch.Tensor:
        """BOS followed by codes[:, :-1] through their tables → ``[B, T, d]`` (T = codes + 1 ≤ code_len)."""
        bos = self.bos.expand(codes.shape[0], 1, -1)
        if codes.shape[1] == 0:
            return bos
        steps = torch.arange(codes.shape[1], device=codes.device)
        return torch.cat([bos, self.lookup(steps.unsqueeze(0), codes)], dim=1)

    def code_logits(self, hidden: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Decoder states ``[B, T, d]`` for code positions start..start+T-1 → ``[B, T, code_num]``."""
        table = self._table()[start:start + hidden.shape[1]]
        return torch.einsum("btd,tcd->btc", hidden, table)

    # ---- passes -----------------------------------------------------------------------
    def encode(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.config.causal_encoder:
            mask = item_causal_mask(mask, self.config.code_len)
        return self.encoder(inputs_embeds=self.embed_history(tokens),
                               attention_mask=mask).last_hidden_state

    def decode(self, encoded: torch.Tensor, mask: torch.Tensor, codes: torch.Tensor,
               cache=None):
        """Teacher-forced decoder over BOS + ``codes`` → (hidden ``[B, T, d]``, cache); a cache
        passed in is filled in place."""
        out = self.decoder(inputs_embeds=self.decoder_inputs(codes),
                              encoder_hidden_states=encoded, encoder_attention_mask=mask,
                              cache=cache, use_cache=cache is not None)
        return out.last_hidden_state, cache

    def group_logits(self, tokens: torch.Tensor, mask: torch.Tensor, codes: torch.Tensor,
                     encoded: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced code logits of G candidate items per history → ``[B*G, code_len,
        code_num]`` for ``codes`` ``[B, G, code_len]``, with the shared work done once per
        history: the encoder, the cross-attention keys and values (computed and stored once, read
        by all candidates) and the first decoder step (BOS, the same for every candidate); only
        the later steps run per candidate. Differentiable; equal to ``decode`` on repeated inputs.
        ``encoded``: this model's encoder output for ``tokens``, when the caller already has it."""
        n, g, code_len = codes.shape
        if encoded is None:
            encoded = self.encode(tokens, mask)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        first, cache = self.decode(encoded, mask, codes.new_zeros(n, 0), cache=cache)
        # the G candidates of a history share its cross-attention keys and values (read through
        # etegrl.attention, which needs the encoder mask per history in 4-D)
        cache.self_attention_cache.batch_repeat_interleave(g)
        flat = codes.reshape(n * g, code_len)
        steps = torch.arange(code_len - 1, device=codes.device)
        rest = self.decoder(inputs_embeds=self.lookup(steps.unsqueeze(0), flat[:, :-1]),
                            encoder_hidden_states=encoded, encoder_attention_mask=shared_mask(mask),
                            cache=cache, use_cache=True).last_hidden_state
        hidden = torch.cat([first.repeat_interleave(g, 0), rest], dim=1)
        return self.code_logits(hidden).float()  # fp32 for the losses, also under autocast

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, target_codes: torch.Tensor):
        """Training pass: code logits ``[B, code_len, code_num]``, pooled encoder state (for
        SIA) and the decoder's BOS state (for PSA)."""
        encoded = self.encode(tokens, mask)
        hidden, _ = self.decode(encoded, mask, target_codes[:, :-1])
        # fp32 from here on (pooling, losses, tokenizer), also when the stacks ran under autocast
        m = mask.unsqueeze(-1).float()
        pooled = (encoded.float() * m).sum(1) / m.sum(1).clamp(min=1.0)
        return {"logits": self.code_logits(hidden).float(), "pooled": pooled,
                "bos_state": hidden[:, 0].float()}


    def forward_sequence(self, tokens: torch.Tensor, mask: torch.Tensor,
                         target_codes: torch.Tensor):
        """Training pass over whole sequences with a causal encoder: a prediction after every
        history item in one pass. ``tokens``/``mask`` ``[B, W*code_len]`` (W items, right-padded),
        ``target_codes [B, W, code_len]``: the codes of the item that follows item w. The
        decoder's W rows of a sequence are folded into its length (row w = positions
        w*code_len ... w*code_len + code_len-1) with a block-diagonal causal self-attention mask,
        and row w reads only the encoder tokens of items 0..w — so row w computes exactly what
        ``forward`` computes for the history of items 0..w (tested). → the same dict as
        ``forward`` with a position axis: logits ``[B, W, code_len, code_num]``, pooled and
        bos_state ``[B, W, ·]``."""
        if not self.config.causal_encoder:
            raise ValueError("forward_sequence needs a model with causal_encoder=True")
        b, w, code_len = target_codes.shape
        encoded = self.encode(tokens, mask)
        bos = self.bos.expand(b, w, 1, -1)
        steps = torch.arange(code_len - 1, device=tokens.device)
        inputs = torch.cat([bos, self.lookup(steps, target_codes[..., :-1])], dim=2)
        row = torch.arange(w * code_len, device=tokens.device) // code_len
        same_row = row[:, None] == row[None, :]
        causal = (torch.arange(w * code_len, device=tokens.device)[:, None]
                  >= torch.arange(w * code_len, device=tokens.device)[None, :])
        self_mask = (same_row & causal)[None, None].expand(b, 1, -1, -1)
        hidden = self.decoder(inputs_embeds=inputs.reshape(b, w * code_len, -1),
                              attention_mask=self_mask, encoder_hidden_states=encoded,
                              encoder_attention_mask=item_causal_mask(mask, code_len),
                              use_cache=False).last_hidden_state
        hidden = hidden.reshape(b, w, code_len, -1)
        table = self._table()
        logits = torch.einsum("bwtd,tcd->bwtc", hidden, table).float()
        # pooled state of the prefix ending at item w: running mean of its encoder tokens
        m = mask.unsqueeze(-1).float()
        sums = (encoded.float() * m).reshape(b, w, code_len, -1).sum(2).cumsum(1)
        counts = m.reshape(b, w, code_len).sum(2).cumsum(1).clamp(min=1.0).unsqueeze(-1)
        return {"logits": logits, "pooled": sums / counts, "bos_state": hidden[:, :, 0].float()}


def training_outputs(model: ETEGRecModel, item_codes: torch.Tensor, hist: torch.Tensor,
                     targets: torch.Tensor):
    """One training batch through the model, as rows: ``targets [B]`` (one per history, prefix
    rows) or ``[B, W]`` (one per position of sequence windows, 0 = none) → (``forward``'s dict
    with one row per scored target, those targets ``[N]``, their codes ``[N, code_len]``)."""
    tokens, mask = history_tokens(hist, item_codes)
    target_codes = item_codes[targets]
    if targets.dim() == 1:
        return model(tokens, mask, target_codes), targets, target_codes
    out = model.forward_sequence(tokens, mask, target_codes)
    keep = targets > 0
    return {k: v[keep] for k, v in out.items()}, targets[keep], target_codes[keep]


def item_causal_mask(mask: torch.Tensor, code_len: int) -> torch.Tensor:
    """``[B, L]`` token mask (L = items × code_len, right-padded) → ``[B, 1, L, L]`` bool: a
    query token sees the valid tokens of its own and every earlier item."""
    item = torch.arange(mask.shape[1], device=mask.device) // code_len
    causal = item[None, :] <= item[:, None]
    return causal[None, None] & mask[:, None, None, :].bool()


def shared_mask(mask: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` encoder mask → ``[B, 1, 1, L]`` bool, the form under which several decoder rows
    per history share its cross-attention keys (``etegrl.attention``)."""
    return mask[:, None, None, :].bool()


def history_tokens(histories: torch.Tensor, item_codes: torch.Tensor):
    """Item ids ``[B, L]`` (0 = padding) → code tokens ``[B, L*code_len]`` and their mask."""
    codes = item_codes[histories]  # [B, L, code_len]; padding row 0 gives zeros
    mask = (histories > 0).unsqueeze(-1).expand_as(codes)
    return codes.reshape(histories.shape[0], -1), mask.reshape(histories.shape[0], -1).long()


def set_dropout(model: nn.Module, rate: float) -> None:
    """Every dropout of a (possibly LoRA-wrapped) model to ``rate``: the ``nn.Dropout`` modules
    and T5's attention-probability dropout, a float attribute of ``T5Attention``."""
    from transformers.models.t5.modeling_t5 import T5Attention

    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = rate
        elif isinstance(m, T5Attention):
            m.dropout = rate
    if hasattr(model, "config") and hasattr(model.config, "dropout_rate"):
        model.config.dropout_rate = rate
