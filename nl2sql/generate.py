"""Generation: prompt in, SQL text out, constrained by the schema's grammar.

The loop reads top to bottom, one step per token (nanoGPT style), because two things make it fast on a
laptop CPU that `model.generate` cannot do:
  1. The schema part of the prompt is the same for every question on a database, so its KV cache is
     computed once and reused; only the question is prefilled.
  2. Gemma's output layer spans 262k tokens, and reading it costs more than the rest of the model. SQL
     over a given schema uses a few thousand of them, so logits are computed for the SQL vocabulary
     (tokens seen in training SQL, every single-character token, and every token of this prompt) and the
     full layer is used only when the grammar allows none of those.
Constraint: outlines' llguidance logits processor masks, at every step, the tokens that cannot continue
valid SQL over this schema. This module is the only one that knows how text is produced, so another
backend (e.g. an OpenAI-compatible server with guided decoding) can slot in behind `SqlGenerator.generate`.
"""
from __future__ import annotations

import copy
import functools
import json
import re
import threading
import warnings
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelError

VOCAB_DIR = Path(__file__).parent / "vocab"
_WORD = re.compile(r"[^\W_]+(?:_[^\W_]+)*|\d+")  # identifiers and words, as the prompt spells them
# transformers 5.2x renames past_key_values to cache; the old name works across all 5.x releases we support
warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated.*")


@dataclass
class Generation:
    text: str
    tokens: int
    seconds: float
    constrained: bool
    # per generated token: its id, how far it led the runner-up (logit gap, inf where there was none or the
    # caller forced it), and the runner-up's id (-1 if none). nl2sql/repair.py branches on these.
    ids: list = field(default_factory=list)
    margins: list = field(default_factory=list)
    runners_up: list = field(default_factory=list)


class SqlGenerator:
    def __init__(self, loaded, sql_vocab_head: bool = False):
        import outlines
        self.loaded = loaded
        self.model = outlines.from_transformers(loaded.model, loaded.tokenizer)
        self.inner = loaded.model.model          # the transformer stack, without the output layer
        self.lm_head = loaded.model.lm_head.weight  # [vocab, hidden]
        self._backend = None
        self._prefix_cache: dict = {}
        self._base_vocab = _load_sql_vocab(loaded.tokenizer) if sql_vocab_head else None
        self._lock = threading.Lock()  # one generation at a time per model (the app's reruns share it)

    @property
    def backend(self):
        if self._backend is None:
            from outlines.backends.llguidance import LLGuidanceBackend
            self._backend = LLGuidanceBackend(self.model)  # builds llguidance's view of the vocabulary once
        return self._backend

    @functools.lru_cache(maxsize=32)
    def _grammar_spec(self, grammar: str):
        llg = self.backend.llg
        spec = llg.grammar_from("lark", grammar)
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(spec, self.backend.llg_tokenizer)
        if is_error:
            raise ModelError(f"The SQL grammar for this schema does not compile: {messages}",
                             hint="Report this schema; meanwhile set NL2SQL_CONSTRAINED=0.")
        return spec

    def _prefix(self, prefix_ids: tuple):
        """KV cache of the schema part of the prompt, computed once per schema."""
        import torch
        if prefix_ids not in self._prefix_cache:
            if len(self._prefix_cache) > 8:
                self._prefix_cache.pop(next(iter(self._prefix_cache)))
            ids = torch.tensor([prefix_ids], device=self.loaded.device)
            out = self.inner(input_ids=ids, use_cache=True)
            self._prefix_cache[prefix_ids] = out.past_key_values
        return copy.deepcopy(self._prefix_cache[prefix_ids])

    def generate(self, prompt: str, grammar: str | None, max_new_tokens: int, prefix: str | None = None,
                 forced: tuple = ()) -> Generation:
        """Greedy decoding of one SQL statement. `prefix` is the part of `prompt` shared across questions;
        `forced` token ids are emitted first (a repair branch), each still checked by the grammar."""
        import torch
        from outlines.backends.llguidance import LLGuidanceLogitsProcessor
        tok = self.loaded.tokenizer
        processor = None
        if grammar is not None:
            processor = LLGuidanceLogitsProcessor(self._grammar_spec(grammar), self.backend.llg_tokenizer,
                                                  self.model.tensor_library_name)
        with self._lock, torch.inference_mode():
            t0 = time.perf_counter()
            ids = tok(prompt, add_special_tokens=True)["input_ids"]
            # reuse the schema's cache only when the prompt tokenizes to exactly that prefix + the rest
            n_prefix = 0
            if prefix:
                p_ids = tok(prefix, add_special_tokens=True)["input_ids"]
                if ids[: len(p_ids)] == p_ids and len(p_ids) < len(ids):
                    n_prefix = len(p_ids)
            cache = self._prefix(tuple(ids[:n_prefix])) if n_prefix else None
            vocab = self._vocab_for(prompt, ids, prefix)  # None: the whole output layer
            head = self.lm_head if vocab is None else self.lm_head[vocab]
            seq = torch.tensor([ids], device=self.loaded.device)
            generated, margins, runners_up = [], [], []
            for t in forced:  # the grammar sees each forced token as if it had been generated
                if processor:
                    allowed = processor.process_logits(seq, torch.zeros((1, self.lm_head.shape[0])))
                    if not torch.isfinite(allowed[0, t]):
                        raise ModelError("A repair branch left the SQL grammar.", hint="Report this question.")
                generated.append(int(t))
                margins.append(float("inf"))
                runners_up.append(-1)
                seq = torch.cat([seq, torch.tensor([[int(t)]], device=self.loaded.device)], dim=1)
            step_in = seq[:, n_prefix:]  # the question (and forced tokens) in one pass after the cached schema
            for _ in range(max_new_tokens - len(generated)):
                # 1. run the new tokens through the model, extending the KV cache
                out = self.inner(input_ids=step_in, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                h = out.last_hidden_state[:, -1]
                # 2. logits (over the SQL vocabulary only, when one is in use, scattered into a full-size row)
                logits = (h @ head.T).float()
                if vocab is not None:
                    row = torch.full((1, self.lm_head.shape[0]), float("-inf"), device=self.loaded.device)
                    row[0, vocab] = logits[0]
                    logits = row
                # 3. the grammar masks what cannot continue valid SQL
                if processor:
                    logits = processor.process_logits(seq, logits)
                if vocab is not None and not torch.isfinite(logits).any():  # nothing allowed in it: use all
                    logits = (h @ self.lm_head.T).float()
                    if processor:  # the same step's mask, already computed by process_logits above
                        import llguidance.torch
                        llguidance.torch.apply_token_bitmask_inplace(logits[0], processor.bitmask[0])
                top = torch.topk(logits[0], 2)
                nxt = int(top.indices[0])
                if nxt == tok.eos_token_id:
                    break
                gap = float(top.values[0] - top.values[1])
                generated.append(nxt)
                margins.append(gap if gap == gap else float("inf"))  # nan (-inf - -inf): no runner-up
                runners_up.append(int(top.indices[1]) if torch.isfinite(top.values[1]) else -1)
                step_in = torch.tensor([[nxt]], device=self.loaded.device)
                seq = torch.cat([seq, step_in], dim=1)
            text = tok.decode(generated, skip_special_tokens=True).strip()
            return Generation(text, len(generated), time.perf_counter() - t0, processor is not None,
                              generated, margins, runners_up)

    def _vocab_for(self, prompt: str, prompt_ids, prefix: str | None):
        import torch
        if self._base_vocab is None:
            return None
        ids = set(self._base_vocab) | set(prompt_ids) | self._word_tokens(prefix or "")
        ids |= self._word_tokens(prompt[len(prefix):] if prefix and prompt.startswith(prefix) else prompt)
        ids.add(self.loaded.tokenizer.eos_token_id)
        return torch.tensor(sorted(ids), device=self.loaded.device)

    @functools.lru_cache(maxsize=64)
    def _word_tokens(self, text: str) -> frozenset:
        """Tokens that spell the prompt's words where SQL puts them: a word inside the prompt tokenizes as
        ' Earnings', but in SQL it follows '(' or '.' or a quote and tokenizes differently. Without these the
        SQL vocabulary lacks the model's preferred spelling and it writes 'EaRningS'."""
        words = set(_WORD.findall(text))
        variants = [pre + form for w in words for form in {w, w.lower(), w.upper()}
                    for pre in ("", " ", ".", "(", "'", '"')]
        if not variants:
            return frozenset()
        enc = self.loaded.tokenizer(variants, add_special_tokens=False)["input_ids"]
        return frozenset(t for seq in enc for t in seq)


def _load_sql_vocab(tokenizer) -> list[int] | None:
    """The shipped SQL vocabulary for this tokenizer, or None (then the full vocabulary is used)."""
    for f in VOCAB_DIR.glob("*.json"):
        data = json.loads(f.read_text())
        if data.get("tokenizer_vocab_size") == len(tokenizer) and data.get("eos") == tokenizer.eos_token_id:
            return data["ids"]
    return None
