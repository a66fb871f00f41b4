"""Generation: prompt in, SQL text out, constrained by the schema's grammar.

The loop reads top to bottom, one step per token (nanoGPT style), because two things make it fast on a
laptop CPU that `model.generate` cannot do:
  1. The schema part of the prompt is the same for every question on a database, so its KV cache is
     computed once and reused; only the question is prefilled.
  2. Gemma's output layer spans 262k tokens, and reading it costs more than the rest of the model. SQL
     over a given schema uses a few thousand of them, so logits are computed for the SQL vocabulary
     (tokens seen in training SQL, every single-character token, and every token of this prompt) and the
     full layer is used only when the grammar allows none of those.
Candidates: N rows decode as one batch over one copy of the prompt's cache (row 0 greedy, the others sampled);
on 2 cores a step of 4 rows costs about what a step of 1 does, because reading the weights dominates.
Constraint, per row: an llguidance matcher (over outlines' view of the tokenizer) masks the tokens that cannot
continue valid SQL over this schema, and nl2sql/binding.py vets the best allowed tokens for scope; when it
blames an earlier construct (a FROM table that lacks a column the SELECT list used), the row backtracks: its
matcher rolls back, its cache positions are masked out, and the token it had chosen there is banned.
A grammar error or a cut-off is that candidate's error, never a truncated answer.
This module is the only one that knows how text is produced, so another backend (e.g. an OpenAI-compatible
server with guided decoding) can slot in behind the same protocol (`candidates`, `generate`, `decode`).
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
    logprob: float = 0.0            # sum of the chosen tokens' log-probabilities (under the grammar's mask)
    backtracks: int = 0             # times the binder sent this candidate back (nl2sql/binding.py)
    error: str | None = None        # the grammar stopped or the token budget ran out: no answer, not a cut one


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

    # --- the public protocol (what a scripted test model or another backend also provides) -----------
    @property
    def model_name(self) -> str:
        return self.loaded.name

    @property
    def adapter_name(self) -> str | None:
        return self.loaded.adapter_version or self.loaded.adapter

    def decode(self, ids) -> str:
        return self.loaded.tokenizer.decode(list(ids), skip_special_tokens=True)

    def generate(self, prompt: str, grammar: str | None, max_new_tokens: int, prefix: str | None = None,
                 forced: tuple = (), binder=None) -> Generation:
        """Greedy decoding of one SQL statement. `forced` token ids are emitted first (a repair branch), each
        still checked by the grammar."""
        return self.candidates(prompt, grammar, max_new_tokens, prefix=prefix, forced=forced, binder=binder)[0]

    def candidates(self, prompt: str, grammar: str | None, max_new_tokens: int, *, prefix: str | None = None,
                   n: int = 1, binder=None, seed: int = 0, temperature: float = 0.7,
                   forced: tuple = ()) -> list[Generation]:
        """N SQL statements decoded together, one batch row each, over one copy of the prompt's KV cache.

        Row 0 is greedy; the others sample (Gumbel top-k at `temperature`, seeded: the same question gives the
        same candidates). `prefix` is the part of `prompt` shared across questions (its cache is reused).
        `binder` (nl2sql/binding.py) vets each candidate token for scope; when it blames an earlier construct
        the row backtracks there (its cache positions masked out) and bans the token it had chosen.
        """
        import torch
        tok = self.loaded.tokenizer
        with self._lock, torch.inference_mode():
            t0 = time.perf_counter()
            ids = tok(prompt, add_special_tokens=True)["input_ids"]
            n_prefix = 0  # reuse the schema's cache only when the prompt tokenizes to exactly that prefix + the rest
            if prefix:
                p_ids = tok(prefix, add_special_tokens=True)["input_ids"]
                if ids[: len(p_ids)] == p_ids and len(p_ids) < len(ids):
                    n_prefix = len(p_ids)
            cache = self._prefix(tuple(ids[:n_prefix])) if n_prefix else None
            vocab = self._vocab_for(prompt, ids, prefix)  # None: the whole output layer
            head = self.lm_head if vocab is None else self.lm_head[vocab]
            device = self.loaded.device
            out = self.inner(input_ids=torch.tensor([ids[n_prefix:]], device=device), past_key_values=cache,
                             use_cache=True)
            cache, h = out.past_key_values, out.last_hidden_state[:, -1]
            if n > 1:
                cache.batch_repeat_interleave(n)
                h = h.expand(n, -1).clone()
            spec = self._grammar_spec(grammar) if grammar is not None else None
            rows = [_Row(self._matcher(spec) if spec is not None else None, binder, i == 0 or temperature <= 0)
                    for i in range(n)]
            attn = torch.ones((n, len(ids)), dtype=torch.long, device=device)
            rng = torch.Generator().manual_seed(seed)
            bitmask = None
            if spec is not None:
                import llguidance.torch
                bitmask = llguidance.torch.allocate_token_bitmask(n, self.backend.llg_tokenizer.vocab_size)
            for _ in range(2 * max_new_tokens + 8 * _MAX_BACKTRACKS):
                if all(r.done for r in rows):
                    break
                logits = self._logits(h, head, vocab)
                feed = torch.zeros((n, 1), dtype=torch.long, device=device)
                fed = torch.zeros((n, 1), dtype=torch.long, device=device)
                for i, r in enumerate(rows):
                    if r.done:
                        continue
                    r.hist.append(h[i].clone())
                    if len(r.ids) < len(forced):
                        t = int(forced[len(r.ids)])
                        if not r.accept(t, float("inf"), -1, 0.0, self._piece(t)):
                            r.fail("A repair branch left the SQL grammar.")
                            continue
                    else:
                        t = self._step(r, i, logits[i], h[i], bitmask, rng, temperature, len(forced), tok, vocab)
                    if t is None:
                        continue   # backtracked, failed or stopped: nothing to feed this step
                    if len(r.ids) >= max_new_tokens:
                        r.fail(f"The SQL was cut off at {max_new_tokens} tokens.")
                        continue
                    feed[i, 0], fed[i, 0] = t, 1
                    r.cache_pos.append(attn.shape[1])
                if all(r.done for r in rows):
                    break
                attn = torch.cat([attn, fed], dim=1)
                # a row's next position counts only its own kept tokens (masked holes do not advance it)
                pos = torch.tensor([[len(ids) + len(r.ids) - 1] for r in rows], device=device)
                out = self.inner(input_ids=feed, attention_mask=attn, position_ids=pos, past_key_values=cache,
                                 use_cache=True)
                cache, h_new = out.past_key_values, out.last_hidden_state[:, -1]
                for i, r in enumerate(rows):
                    if fed[i, 0]:
                        h[i] = h_new[i]
                    elif r.restore is not None:      # backtracked: continue from the hidden state kept there
                        h[i] = r.restore
                        attn[i, r.holes] = 0
                        r.restore, r.holes = None, []
            seconds = time.perf_counter() - t0
            return [r.result(self.decode, seconds, spec is not None) for r in rows]

    def _step(self, r, i, row_logits, h_i, bitmask, rng, temperature, n_forced, tok, vocab):
        """Choose row r's next token; returns it, or None when the row backtracked, stopped or failed.

        Works on the SQL vocabulary's logits when there is one (a tenth of the full row), else on all."""
        import torch
        if r.matcher is not None:
            import llguidance.torch
            llguidance.torch.fill_next_token_bitmask(r.matcher, bitmask, i)
            if r.matcher.is_error():
                r.fail(f"The SQL grammar stopped: {r.matcher.get_error()[:200]}")
                return None
        ids = vocab
        scores = self._masked(row_logits, ids, r, bitmask, i)
        if ids is not None and not torch.isfinite(scores).any():  # nothing allowed in the SQL vocabulary
            ids = None
            scores = self._masked((h_i @ self.lm_head.T).float(), None, r, bitmask, i)
        if not torch.isfinite(scores).any():
            r.fail("The SQL grammar allows no next token here.")
            return None

        def token(k):
            return int(k) if ids is None else int(ids[int(k)])
        logp = torch.log_softmax(scores, dim=-1)
        k_top = min(_CANDIDATES_PER_STEP, scores.shape[0])
        top = torch.topk(scores, k_top)
        gap = float(top.values[0] - top.values[1]) if k_top > 1 else float("inf")
        runner_up = token(top.indices[1]) if k_top > 1 and torch.isfinite(top.values[1]) else -1
        if r.greedy:
            order = top.indices
        else:
            u = torch.rand(scores.shape, generator=rng).clamp_(1e-10, 1.0)
            order = torch.topk(scores / temperature - torch.log(-torch.log(u)), k_top).indices
        eos = tok.eos_token_id
        for k in order:
            if not torch.isfinite(scores[k]):
                break
            t = token(k)
            piece = "" if t == eos else self._piece(t)
            verdict = None
            if r.binder is not None and r.backtracks <= _MAX_BACKTRACKS:
                verdict = r.binder.check(r.text + piece, final=(t == eos))
            if verdict is not None and verdict >= len(r.text):
                continue              # this token itself breaks a binding: try the next one
            if verdict is not None and r.backtrack(verdict, n_forced):
                return None
            return self._take(r, t, gap, runner_up, float(logp[k]), piece, eos)
        # every candidate was refused by the binder: give up binding for this row, keep the grammar's best
        r.binder = None
        t = token(order[0])
        return self._take(r, t, gap, runner_up, float(logp[order[0]]), "" if t == eos else self._piece(t), eos)

    @staticmethod
    def _take(r, t, gap, runner_up, logp, piece, eos):
        if t == eos:
            r.done = True
            return None
        if not r.accept(t, gap if gap == gap else float("inf"), runner_up, logp, piece):
            r.fail("The SQL grammar refused a token" + (f": {r.matcher.get_error()[:200]}" if r.matcher else "."))
            return None
        return t

    def _masked(self, logits, ids, r, bitmask, i):
        """Logits (over `ids`, or the whole vocabulary) with what the grammar and the row's bans forbid at -inf."""
        scores = logits.clone()
        if r.matcher is not None:
            if ids is None:
                _apply_mask(scores, bitmask[i])
            else:  # the grammar's bits for just these ids (32 tokens per int32 word)
                words = bitmask[i][ids >> 5]
                allowed = ((words >> (ids & 31)) & 1).bool()
                scores.masked_fill_(~allowed, float("-inf"))
        for t in r.bans.get(len(r.ids), ()):
            if ids is None:
                scores[t] = float("-inf")
            else:
                scores.masked_fill_(ids == t, float("-inf"))
        return scores

    @staticmethod
    def _logits(h, head, vocab):
        """[rows, len(vocab)] logits (the whole output layer when vocab is None)."""
        return (h @ head.T).float()

    def _matcher(self, spec):
        import llguidance
        return llguidance.LLMatcher(self.backend.llg_tokenizer, spec)

    @functools.lru_cache(maxsize=None)
    def _piece(self, t: int) -> str:
        """The text one token adds (SentencePiece marks a leading space with U+2581)."""
        piece = self.loaded.tokenizer.convert_ids_to_tokens(int(t))
        if piece is None:
            return ""
        if piece.startswith("<0x") and piece.endswith(">"):
            return ""  # a byte of a multi-byte character: no ASCII SQL syntax in it
        return piece.replace("\u2581", " ")

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


_MAX_BACKTRACKS = 6        # per row; past that the row decodes under the grammar alone
_CANDIDATES_PER_STEP = 12  # tokens the binder may turn down at one step before it gives up on the row


def _apply_mask(scores, bitmask_row) -> None:
    """-inf where llguidance's bitmask (32 tokens per int32) forbids a token."""
    import llguidance.torch
    width = bitmask_row.shape[0] * 32
    if scores.shape[0] > width:
        scores[width:] = float("-inf")
    llguidance.torch.apply_token_bitmask_inplace(scores[: min(width, scores.shape[0])], bitmask_row)


class _Row:
    """One candidate being decoded: its tokens, text, grammar matcher, binder and backtracking state."""

    def __init__(self, matcher, binder, greedy: bool):
        self.matcher, self.binder, self.greedy = matcher, binder, greedy
        self.ids, self.margins, self.runners_up, self.logps, self.starts = [], [], [], [], []
        self.hist, self.cache_pos, self.holes = [], [], []
        self.bans: dict[int, set] = {}
        self.text = ""
        self.done = False
        self.error: str | None = None
        self.backtracks = 0
        self.restore = None

    def accept(self, t: int, margin: float, runner_up: int, logp: float, piece: str) -> bool:
        if self.matcher is not None and not self.matcher.consume_token(t):
            return False
        self.ids.append(t)
        self.margins.append(margin)
        self.runners_up.append(runner_up)
        self.logps.append(logp)
        self.starts.append(len(self.text))
        self.text += piece
        return True

    def backtrack(self, offset: int, n_forced: int) -> bool:
        """Drop the tokens from the one that holds `offset` on, and ban that token at its position."""
        j = max((k for k, start in enumerate(self.starts) if start <= offset), default=0)
        if j < n_forced or not self.ids:
            self.binder = None   # never undo a forced (repair) prefix: decode on without binding
            return False
        drop = len(self.ids) - j
        if self.matcher is not None:
            self.matcher.rollback(drop)
        self.bans = {k: v for k, v in self.bans.items() if k < j}
        self.bans.setdefault(j, set()).add(self.ids[j])
        self.holes = self.cache_pos[j:]
        self.restore = self.hist[j]
        self.text = self.text[: self.starts[j]]
        for lst in (self.ids, self.margins, self.runners_up, self.logps, self.starts, self.cache_pos):
            del lst[j:]
        del self.hist[j + 1:]
        self.hist.pop()          # hist[j] is appended again when position j is decoded next
        self.backtracks += 1
        return True

    def fail(self, message: str) -> None:
        self.error, self.done = message, True

    def result(self, decode, seconds: float, constrained: bool) -> Generation:
        text = decode(self.ids).strip()
        return Generation(text, len(self.ids), seconds, constrained, list(self.ids), list(self.margins),
                          list(self.runners_up), logprob=sum(self.logps), backtracks=self.backtracks,
                          error=self.error)


class ScriptedGenerator:
    """A stand-in for the model that answers with queued SQL strings, in order (one per decoding), and
    records the prompts and grammars it was given: `Pipeline(settings, generator=ScriptedGenerator([...]))`
    tests everything around the model without loading one."""

    model_name = "scripted"
    adapter_name = None

    def __init__(self, outputs):
        self.outputs = list(outputs)
        self.prompts: list[str] = []
        self.grammars: list = []

    def decode(self, ids) -> str:
        return "".join(chr(i) for i in ids)

    def generate(self, prompt, grammar, max_new_tokens, prefix=None, forced=(), binder=None) -> Generation:
        return self.candidates(prompt, grammar, max_new_tokens, prefix=prefix, forced=forced, binder=binder)[0]

    def candidates(self, prompt, grammar, max_new_tokens, *, prefix=None, n=1, binder=None, seed=0,
                   temperature=0.7, forced=()) -> list[Generation]:
        """The next queued output: a string (one candidate) or a list of (sql, log-probability) pairs."""
        self.prompts.append(prompt)
        self.grammars.append(grammar)
        out = self.outputs.pop(0)
        pairs = [(out, 0.0)] if isinstance(out, str) else list(out)
        # one "token" per character; no runner-ups, so repair has nothing to branch on
        return [Generation(text, len(text), 0.0, grammar is not None, [ord(c) for c in text],
                           [float("inf")] * len(text), [-1] * len(text), logprob=lp) for text, lp in pairs]


def _load_sql_vocab(tokenizer) -> list[int] | None:
    """The shipped SQL vocabulary for this tokenizer, or None (then the full vocabulary is used)."""
    for f in VOCAB_DIR.glob("*.json"):
        data = json.loads(f.read_text())
        if data.get("tokenizer_vocab_size") == len(tokenizer) and data.get("eos") == tokenizer.eos_token_id:
            return data["ids"]
    return None
