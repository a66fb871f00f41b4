"""Shared-prefix ("cascade") attention for batched decoding: one copy of a schema prefix's KV for all rows.

Every question on a database starts with the same prompt prefix (the schema `render_schema` writes, ~750
tokens on the demo), and its KV cache is computed once (`SqlGenerator._prefix`). A decoding batch of 8 questions
x 4 candidates used to hold that prefix 32 times, once per row, and read all 32 copies every step (more bytes
than the weights). Here the batch keeps:

  * one `SharedPrefix` per distinct prefix: each layer's keys and values with batch size 1, and
  * per row, only its suffix: the question's tokens and the generated ones (DecodeBatch's cache, left-padded
    as before, `DecodeBatch.attn` marking the slots a row may see: padding and backtracked holes are 0).

A row's attention is the softmax over [its prefix's keys ∪ its suffix keys]. It is computed as two partial
attentions, each returning its output and the log-sum-exp of its scores, merged exactly:

    lse = logaddexp(lse_p, lse_s);  out = out_p * exp(lse_p - lse) + out_s * exp(lse_s - lse)

The prefix part runs once per distinct prefix with all of that prefix's rows (and the query heads of each
key/value head) stacked as the query length of one attention over batch 1: the prefix's keys are read once a
step, as a matrix product, instead of once per row. The suffix part is per row, as before, over short caches.
Both run PyTorch's CPU flash-attention kernel (`_scaled_dot_product_flash_attention_for_cpu`, which also returns
the log-sum-exp) in float32: the prefix is kept in float32 (one copy: ~28 MB for 750 tokens), the queries and
the short suffixes are converted each step, so the merged result is no less accurate than bfloat16 SDPA.

Windows: the mask of the path this replaces measures Gemma 3's sliding window in cache *slots* of a row's own
cache (prefix slots, then suffix slots, backtracked holes included; left padding in front does not count). A
decoding row whose newest slot is v sees slot k when k > v - window. With the row's suffix starting at batch
column `lead` (its first slot, always a question token), suffix column c is slot P + c - lead and the new token's
column q is slot v = P + q - lead: in the suffix the window is c > q - window, as before; in the prefix it is
k >= v - window + 1 (per row: rows of one prefix are at different slots). A row whose window has left the prefix
entirely gets no prefix part (lse_p = -inf). Rows whose prompt has no cached prefix (P = 0) are in no group:
their whole prompt is their suffix.

`CascadeStep` is what DecodeBatch passes to the model as the attention mask of every layer type (a dict, which
Gemma 3 takes as prepared masks), and nl2sql's registered attention (`generate._windowed_sdpa_name`) hands it to
`cascade_attention` here; prefill and any other call still get plain (windowed) SDPA.
"""
from __future__ import annotations

from dataclasses import dataclass, field


class SharedPrefix:
    """One prompt prefix's KV cache, batch size 1, float32, per layer: what every row on that prefix reads."""

    def __init__(self, ids: tuple, cache):
        import torch
        self.ids = ids
        self.length = len(ids)
        # [1, kv_heads, P, head_dim] per layer, converted once (the batch reads it every step)
        self.keys = [layer.keys[:1].to(torch.float32).contiguous() for layer in cache.layers]
        self.values = [layer.values[:1].to(torch.float32).contiguous() for layer in cache.layers]

    def __repr__(self) -> str:
        return f"SharedPrefix({self.length} tokens, {len(self.keys)} layers)"


@dataclass
class _Group:
    rows: object              # LongTensor: the batch rows on this prefix
    prefix: SharedPrefix
    newest: object            # LongTensor [rows]: each row's newest slot in its own cache (v above)
    sliding: dict = field(default_factory=dict)   # window -> (first prefix slot read, kept rows, mask or None)


class CascadeStep:
    """One decoding step's attention layout: the suffix mask ([rows, suffix slots], True = visible) and the rows
    of each shared prefix. Passed through the model as the attention mask (see the module docstring)."""

    def __init__(self, attn, prefix_len, groups: list):
        import torch
        self.visible = attn.bool()                       # [R, S]; column S-1 is the token decoded this step
        self.prefix_len = prefix_len                     # LongTensor [R] (0: no shared prefix)
        lead = self.visible.long().argmax(dim=1)         # each row's first own slot
        self.newest = prefix_len + (self.visible.shape[1] - 1 - lead)
        self.groups = [_Group(rows, prefix, self.newest[rows]) for rows, prefix in groups]
        self._suffix_masks: dict = {}
        self._neg = torch.tensor(float("-inf"))

    def suffix_mask(self, window):
        """Additive float32 mask [R, 1, 1, S]: 0 where a row sees the suffix slot, -inf elsewhere."""
        import torch
        if window not in self._suffix_masks:
            vis = self.visible
            if window is not None:
                s = vis.shape[1]
                vis = vis & (torch.arange(s) > s - 1 - window)
            m = torch.zeros(vis.shape, dtype=torch.float32).masked_fill_(~vis, float("-inf"))
            self._suffix_masks[window] = m[:, None, None, :]
        return self._suffix_masks[window]

    @staticmethod
    def prefix_window(group: _Group, window, heads_per_kv: int):
        """For a sliding layer: (first prefix slot any row sees, index of the group's rows that see some prefix,
        additive mask [1, 1, rows*heads_per_kv, P - first] or None when every kept row sees all of it)."""
        import torch
        if window is None:
            return 0, None, None
        if window not in group.sliding:
            start = (group.newest - window + 1).clamp(min=0)          # first prefix slot each row sees
            keep = torch.nonzero(start < group.prefix.length).flatten()
            if keep.numel() == 0:
                group.sliding[window] = (group.prefix.length, keep, None)
            else:
                start = start[keep]
                lo = int(start.min())
                mask = None
                if int(start.max()) > lo:
                    cols = torch.arange(lo, group.prefix.length)
                    hide = cols[None, :] < start[:, None]                     # [kept rows, P - lo]
                    hide = hide.repeat_interleave(heads_per_kv, dim=0)        # one query per head of a kv head
                    mask = torch.zeros(hide.shape, dtype=torch.float32).masked_fill_(hide, float("-inf"))[None, None]
                group.sliding[window] = (lo, keep, mask)
        return group.sliding[window]


def _flash(q, k, v, mask, scale):
    """PyTorch's CPU flash attention: (out [B, H, L, D], log-sum-exp [B, H, L]) in q's dtype / float32."""
    import torch
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=mask,
                                                                          scale=scale)
    return out, lse


def cascade_attention(module, query, key, value, step: CascadeStep, scaling=None, sliding_window=None, **kwargs):
    """Attention of one decoding token per row over [its prefix (shared) ∪ its suffix], as the model's attention
    interface returns it: ([rows, 1, heads, head_dim], None). `key`/`value` are the batch's suffix cache."""
    import torch
    rows, heads, q_len, dim = query.shape
    assert q_len == 1, "cascade attention is for decoding one token per row"
    kv_heads = key.shape[1]
    g = heads // kv_heads
    # GQA packed: the g query heads of a kv head are g query positions of that head (no repeated keys)
    q = query.reshape(rows, kv_heads, g, dim).float()
    out, lse = _flash(q, key.float(), value.float(), step.suffix_mask(sliding_window), scaling)  # [R, kvh, g, *]
    for group in step.groups:
        lo, keep, mask = step.prefix_window(group, sliding_window, g)
        idx = group.rows if keep is None else group.rows[keep]
        if idx.numel() == 0:
            continue
        kp = group.prefix.keys[module.layer_idx][:, :, lo:]
        vp = group.prefix.values[module.layer_idx][:, :, lo:]
        n = idx.numel()
        # all of this prefix's rows as one batch-1 query block: [1, kvh, n*g, D] against [1, kvh, P - lo, D]
        qg = q.index_select(0, idx).permute(1, 0, 2, 3).reshape(1, kv_heads, n * g, dim)
        op, lp = _flash(qg, kp, vp, mask, scaling)
        op = op.reshape(kv_heads, n, g, dim).permute(1, 0, 2, 3)     # back to [n, kvh, g, D]
        lp = lp.reshape(kv_heads, n, g).permute(1, 0, 2)
        ls = lse.index_select(0, idx)
        merged = torch.logaddexp(ls, lp)
        o = out.index_select(0, idx) * torch.exp(ls - merged)[..., None] + op * torch.exp(lp - merged)[..., None]
        out.index_copy_(0, idx, o)
        lse.index_copy_(0, idx, merged)
    # [R, kvh, g, D] -> [R, 1, heads, D] (what transformers' attention functions return)
    return out.reshape(rows, 1, heads, dim).to(query.dtype), None
