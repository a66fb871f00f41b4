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
import os
import re
import threading
import warnings
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

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
        self._shared_cache: dict = {}   # prefix ids -> SharedPrefix (one float32 copy read by a whole batch)
        # decoding batches keep one copy of each schema prefix's KV (nl2sql/shared_prefix.py); NL2SQL_SHARED_PREFIX=0
        # goes back to a full cache per row
        self.shared_prefix = os.environ.get("NL2SQL_SHARED_PREFIX", "1").strip().lower() not in ("0", "false", "no")
        self._base_vocab = _load_sql_vocab(loaded.tokenizer) if sql_vocab_head else None
        self._lock = threading.Lock()  # one generation at a time per model (the app's reruns share it)
        if getattr(loaded.model.config, "_attn_implementation", None) == "sdpa":
            loaded.model.set_attn_implementation(_windowed_sdpa_name())

    @property
    def backend(self):
        if self._backend is None:
            from .model import llg_backend
            # outlines' LLGuidanceBackend over llguidance's view of the vocabulary, built once (in the background
            # from its cached input when the model came from the merged cache: nl2sql/model.py)
            self._backend = llg_backend(self.model, self.loaded)
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
            out = self.inner(input_ids=ids, past_key_values=_full_cache(), use_cache=True)
            self._prefix_cache[prefix_ids] = out.past_key_values
        return copy.deepcopy(self._prefix_cache[prefix_ids])

    def _shared(self, prefix_ids: tuple):
        """The schema prefix's KV as one SharedPrefix (batch 1, float32), for cascade attention in DecodeBatch."""
        from .shared_prefix import SharedPrefix
        shared = self._shared_cache.get(prefix_ids)
        if shared is None:
            if prefix_ids not in self._prefix_cache:
                self._prefix(prefix_ids)
            if len(self._shared_cache) > 8:
                self._shared_cache.pop(next(iter(self._shared_cache)))
            shared = self._shared_cache[prefix_ids] = SharedPrefix(prefix_ids, self._prefix_cache[prefix_ids])
        return shared

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
        return self.candidates_many([GenRequest(prompt, grammar, max_new_tokens, prefix=prefix, n=n, binder=binder,
                                                seed=seed, temperature=temperature, forced=tuple(forced))])[0]

    def candidates_many(self, requests: list["GenRequest"]) -> list[list[Generation]]:
        """Several questions' candidates decoded as one batch (each with its own prompt, grammar and binder);
        the result for each request is the one `candidates` gives it alone (see DecodeBatch)."""
        with self._lock:
            batch = DecodeBatch(self)
            handles = [batch.add(r) for r in requests]
            done = dict(batch.pop_finished())   # requests that failed before decoding (cancelled)
            while batch.rows:
                batch.step()
                done.update(batch.pop_finished())
        for h in handles:
            if isinstance(done[h], BaseException):
                raise done[h]
        return [done[h] for h in handles]

    def _step(self, r, i, row_logits, h_i, bitmask, rng, temperature, n_forced, tok, vocab):
        """Choose row r's next token; returns it, or None when the row backtracked, stopped or failed.

        Works on the SQL vocabulary's logits when there is one (a tenth of the full row), else on all."""
        import torch
        if r.matcher is not None:   # its row of `bitmask` was filled for this step (DecodeBatch.step)
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

    @functools.cached_property
    def executor(self):
        """llguidance's thread pool for computing the masks of a batch's rows together."""
        import llguidance
        import torch
        return llguidance.LLExecutor(max(1, torch.get_num_threads()))   # NL2SQL_THREADS, as torch has it

    @functools.lru_cache(maxsize=None)
    def _piece(self, t: int) -> str:
        """The text one token adds (SentencePiece marks a leading space with U+2581)."""
        piece = self.loaded.tokenizer.convert_ids_to_tokens(int(t))
        if piece is None:
            return ""
        if piece.startswith("<0x") and piece.endswith(">"):
            return ""  # a byte of a multi-byte character: no ASCII SQL syntax in it
        return piece.replace("\u2581", " ")

    @functools.cached_property
    def _base_head(self):
        """(ids, output-layer rows) of the shipped SQL vocabulary, sorted: the part of every request's vocabulary
        that a decoding batch scores for all its rows in one product (DecodeBatch.step)."""
        import torch
        ids = torch.tensor(sorted(set(self._base_vocab)), device=self.loaded.device)
        return ids, self.lm_head[ids]

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


@dataclass
class GenRequest:
    """One question's decoding: what `SqlGenerator.candidates` takes, as data (so requests can be batched)."""
    prompt: str
    grammar: str | None
    max_new_tokens: int
    prefix: str | None = None
    n: int = 1
    binder: object = None
    seed: int = 0
    temperature: float = 0.7
    forced: tuple = ()
    cancelled: Callable[[], bool] | None = None  # polled between steps: True drops the request's rows


class RequestCancelled(Exception):
    """The caller gave up on a request (a client disconnected, the service is stopping); its rows were dropped.
    Deliberately not an Nl2SqlError: it must end the question, never become an answer's error."""


@runtime_checkable
class Generator(Protocol):
    """What the pipeline needs from a text generator: SqlGenerator in process, nl2sql.batching's
    BatchingGenerator in the server, ScriptedGenerator in tests, and later a remote OpenAI-compatible server
    with guided decoding. Repair (nl2sql/repair.py) needs `decode` and the Generation's ids/margins/runners_up."""

    @property
    def model_name(self) -> str: ...

    @property
    def adapter_name(self) -> str | None: ...

    def decode(self, ids) -> str: ...

    def generate(self, prompt: str, grammar: str | None, max_new_tokens: int, prefix: str | None = None,
                 forced: tuple = (), binder=None) -> Generation: ...

    def candidates(self, prompt: str, grammar: str | None, max_new_tokens: int, *, prefix: str | None = None,
                   n: int = 1, binder=None, seed: int = 0, temperature: float = 0.7,
                   forced: tuple = ()) -> list[Generation]: ...

    def candidates_many(self, requests: list[GenRequest]) -> list[list[Generation]]: ...


def _full_cache():
    """A KV cache that keeps every position in every layer, Gemma's sliding-window layers included (the window
    is then applied by the attention mask). Caches of different questions can be merged row-wise only when
    their layers have the same layout, which a sliding layer's rolling buffer does not give."""
    return _growing_cache_class()()


@functools.lru_cache(maxsize=None)
def _growing_cache_class():
    """DynamicCache whose layers are views of buffers with room to grow (built on first use: transformers is
    imported lazily)."""
    from transformers import DynamicCache
    from transformers.cache_utils import Cache, DynamicLayer

    class GrowingLayer(DynamicLayer):
        """Appending a decoded token writes it in place, where DynamicLayer copies the whole layer
        (torch.cat per layer per step was a third of a batched step on the CPU). Code that replaces
        .keys/.values (a merge, a row selection, a trim) only makes the next update copy once."""

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, q = self.get_seq_length(), key_states.shape[-2]
            if not self._owns_views() or n + q > self._kbuf.shape[-2]:
                self._reserve(n, n + q, key_states)
            self._kbuf[:, :, n:n + q] = key_states
            self._vbuf[:, :, n:n + q] = value_states
            self._set_views(n + q)
            return self.keys, self.values

        def _owns_views(self) -> bool:
            return getattr(self, "_kview", None) is self.keys and getattr(self, "_vview", None) is self.values

        def _reserve(self, n: int, need: int, like) -> None:
            import torch
            cap = _room_for(need)
            shape = (like.shape[0], like.shape[1], cap, like.shape[3])
            kbuf = torch.empty(shape, dtype=like.dtype, device=like.device)
            vbuf = torch.empty(shape, dtype=like.dtype, device=like.device)
            if n:
                kbuf[:, :, :n] = self.keys
                vbuf[:, :, :n] = self.values
            self._kbuf, self._vbuf = kbuf, vbuf

        def _set_views(self, n: int) -> None:
            self.keys, self.values = self._kbuf[:, :, :n], self._vbuf[:, :, :n]
            self._kview, self._vview = self.keys, self.values

        def adopt(self, kbuf, vbuf, n: int) -> None:
            """Take buffers built elsewhere (DecodeBatch's merge) as this layer's storage, n slots in use."""
            self._kbuf, self._vbuf, self.is_initialized = kbuf, vbuf, True
            self.device = kbuf.device
            self._set_views(n)

    class GrowingCache(DynamicCache):
        def __init__(self):
            Cache.__init__(self, layer_class_to_replicate=GrowingLayer)

    return GrowingCache


@functools.lru_cache(maxsize=None)
def _windowed_sdpa_name() -> str:
    """Register (once) PyTorch SDPA that lets a sliding-window layer decoding one token read only the slots some
    row may see. Decoding keeps every layer's full cache (see _full_cache) and the mask applies Gemma's window, so
    plain SDPA reads all of it: 15 of Gemma 3's 18 layers see 512 slots of a 1,500-slot schema prompt, and with
    32 rows in a batch that reading is most of a step. Same result (the skipped slots are masked for every row).
    A DecodeBatch step over shared prefixes passes a CascadeStep as the mask: that goes to cascade attention."""
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from .shared_prefix import CascadeStep, cascade_attention

    def windowed_sdpa(module, query, key, value, attention_mask, **kwargs):
        if isinstance(attention_mask, CascadeStep):   # a DecodeBatch step over shared prefixes
            return cascade_attention(module, query, key, value, attention_mask, **kwargs)
        if (getattr(module, "is_sliding", False) and attention_mask is not None and attention_mask.dim() == 4
                and query.shape[2] == 1 and attention_mask.dtype == torch.bool):
            n = min(key.shape[-2], attention_mask.shape[-1])
            start = int(attention_mask[..., :n].reshape(-1, n).any(0).long().argmax())
            if start >= _MIN_SKIP:
                key, value = key[:, :, start:n], value[:, :, start:n]
                attention_mask = attention_mask[..., start:n]
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("nl2sql_sdpa", windowed_sdpa)
    AttentionMaskInterface.register("nl2sql_sdpa", sdpa_mask)
    return "nl2sql_sdpa"


class _Live:
    """A request in a DecodeBatch: its rows, prompt length, vocabulary head, random stream and clock; with shared
    prefixes, also the SharedPrefix its rows read (None: its whole prompt is in its rows' cache) and how many
    cache slots its prompt fills in the batch (n_ids without a shared prefix, n_ids - its length with one)."""

    def __init__(self, handle, req: GenRequest, rows: list, n_ids: int, vocab, head, constrained: bool, rng, t0,
                 prefix=None):
        self.handle, self.req, self.rows, self.n_ids = handle, req, rows, n_ids
        self.vocab, self.head, self.constrained, self.rng, self.t0 = vocab, head, constrained, rng, t0
        self.prefix = prefix
        self.split = None   # (positions in vocab of the shared SQL vocabulary, of this request's extra tokens)
        self.n_slots = n_ids - (prefix.length if prefix is not None else 0)
        self.steps = 0
        self.error: BaseException | None = None


class DecodeBatch:
    """Rows of several requests decoding together, one token per row per `step()`; requests may join while
    others are mid-way (continuous batching) and leave as soon as their rows are done.

    Each request is prefilled alone (its schema prefix's cache + its question), then its cache is merged into
    the batch's: the shorter side is left-padded with masked slots. Every row keeps its own position ids, so a
    row attends to exactly the keys it would alone, at the same distances from the newest slot (which is what
    Gemma's sliding-window layers measure); rows differ only by float rounding of the batched matrix products.

    Shared prefixes (the default with nl2sql's attention; nl2sql/shared_prefix.py): the batch's cache holds only
    what follows each request's schema prefix (its question and generated tokens); each distinct prefix is kept
    once (`prefixes`), and each step attends to it once for all its rows, merged with the rows' own part by
    log-sum-exp. A request without a cached prefix keeps its whole prompt in its rows. Off (`shared_prefix=False`,
    NL2SQL_SHARED_PREFIX=0, or another attention implementation), every row holds its whole prompt, as before.
    """

    def __init__(self, gen: "SqlGenerator", shared_prefix: bool | None = None):
        self.gen = gen
        self.device = gen.loaded.device
        config = gen.loaded.model.config
        if shared_prefix is None:
            shared_prefix = getattr(gen, "shared_prefix", False)
        # cascade attention is dispatched by nl2sql's registered attention, runs PyTorch's CPU flash kernel and does
        # no logit soft-capping (Gemma 3 has none): anything else decodes with a full cache per row
        self.shared = bool(shared_prefix and getattr(config, "_attn_implementation", None) == _windowed_sdpa_name()
                           and getattr(config, "attn_logit_softcapping", None) is None
                           and str(self.device).startswith("cpu"))
        self.rows: list[_Row] = []     # the batch's rows, in cache order
        self.owner: list[_Live] = []   # the request of each row
        self.live: list[_Live] = []
        self.cache = None
        self.attn = None               # [rows, slots] 1 where a slot holds one of the row's kept tokens
        self.h = None                  # [rows, hidden] the hidden state each row decodes its next token from
        self._finished: list = []
        self._pending: list = []       # (cache, hidden, request) prefilled by add(), merged at the next step
        self._next = 0

    def add(self, req: GenRequest):
        """Prefill `req` and append its rows; returns its handle (results come from pop_finished)."""
        import torch
        g, tok = self.gen, self.gen.loaded.tokenizer
        handle, self._next = self._next, self._next + 1
        t0 = time.perf_counter()
        if req.cancelled is not None and req.cancelled():
            live = _Live(handle, req, [], 0, None, None, False, None, t0)
            live.error = RequestCancelled()
            self._finished.append((handle, live))
            return handle
        with torch.inference_mode():
            ids = tok(req.prompt, add_special_tokens=True)["input_ids"]
            n_prefix = 0  # reuse the schema's cache only when the prompt tokenizes to exactly that prefix + the rest
            if req.prefix:
                p_ids = tok(req.prefix, add_special_tokens=True)["input_ids"]
                if ids[: len(p_ids)] == p_ids and len(p_ids) < len(ids):
                    n_prefix = len(p_ids)
            cache = g._prefix(tuple(ids[:n_prefix])) if n_prefix else _full_cache()
            vocab = g._vocab_for(req.prompt, ids, req.prefix)  # None: the whole output layer
            head, split = g.lm_head, None
            if vocab is not None:
                # the shipped SQL vocabulary (most of `vocab`) is scored for the whole batch at once; this request
                # keeps only the rows of its own extra tokens (its prompt's words) and where both go in `vocab`
                base_ids, _ = g._base_head
                in_base = torch.isin(vocab, base_ids)
                split = (torch.nonzero(in_base).flatten(), torch.nonzero(~in_base).flatten())
                head = g.lm_head[vocab[split[1]]]
            out = g.inner(input_ids=torch.tensor([ids[n_prefix:]], device=self.device), past_key_values=cache,
                          use_cache=True)
            shared = g._shared(tuple(ids[:n_prefix])) if self.shared and n_prefix else None
            if shared is not None:   # the batch keeps only the question's slots; the prefix is read from `shared`
                for layer in out.past_key_values.layers:
                    layer.keys, layer.values = layer.keys[:, :, n_prefix:], layer.values[:, :, n_prefix:]
            spec = g._grammar_spec(req.grammar) if req.grammar is not None else None
            n = max(1, req.n)
            first = g._matcher(spec) if spec is not None else None   # compiling is the slow part: copy it
            rows = [_Row(first if i == 0 or first is None else first.deep_copy(), req.binder,
                         i == 0 or req.temperature <= 0) for i in range(n)]
            live = _Live(handle, req, rows, len(ids), vocab, head, spec is not None,
                         torch.Generator().manual_seed(req.seed), t0, prefix=shared)
            live.split = split
        self._pending.append((out.past_key_values, out.last_hidden_state[:, -1].clone(), live))
        self.rows += rows
        self.owner += [live] * n
        self.live.append(live)
        return handle

    def _admit(self) -> None:
        """Merge the caches of requests added since the last step into the batch's, one copy per layer for all
        of them (merging one by one copied the growing batch once per request). A request's N rows share its
        one prefilled cache (broadcast into N rows here); shorter caches are left-padded with masked slots."""
        import torch
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        sources = []   # (cache, rows it fills, slots it holds, attention rows)
        if self.cache is not None:
            sources.append((self.cache, self.attn.shape[0], self.attn.shape[1], self.attn))
        for cache, _, live in pending:
            sources.append((cache, len(live.rows), live.n_slots, None))
        width = max(slots for _, _, slots, _ in sources)
        total = sum(rows for _, rows, _, _ in sources)
        cap = _room_for(width)
        attn = torch.zeros((total, width), dtype=torch.long, device=self.device)
        r0 = 0
        for _, rows, slots, a in sources:
            attn[r0:r0 + rows, width - slots:] = 1 if a is None else a
            r0 += rows
        layers = sources[0][0].layers
        for li, layer in enumerate(layers):
            like = layer.keys
            kbuf = torch.empty((total, like.shape[1], cap, like.shape[3]), dtype=like.dtype, device=self.device)
            vbuf = torch.empty_like(kbuf)
            r0 = 0
            for cache, rows, slots, _ in sources:
                src = cache.layers[li]
                kbuf[r0:r0 + rows, :, :width - slots] = 0   # masked, but must be finite: a NaN score survives the mask
                vbuf[r0:r0 + rows, :, :width - slots] = 0
                kbuf[r0:r0 + rows, :, width - slots:width] = src.keys     # broadcasts a request's 1 row to N
                vbuf[r0:r0 + rows, :, width - slots:width] = src.values
                r0 += rows
            layer.adopt(kbuf, vbuf, width)
        if self.cache is not None and width > self.attn.shape[1]:
            shift = width - self.attn.shape[1]    # slot numbers of the rows already decoding moved right
            for r in self.rows[: self.attn.shape[0]]:
                r.cache_pos = [p + shift for p in r.cache_pos]
        hs = ([self.h] if self.h is not None else []) + [h.expand(len(live.rows), -1) for _, h, live in pending]
        self.cache, self.attn, self.h = sources[0][0], attn, torch.cat(hs)

    def step(self) -> None:
        """One token for every row that is still decoding (or one backtrack), then drop finished requests."""
        import torch
        g, tok = self.gen, self.gen.loaded.tokenizer
        n = len(self.rows)
        with torch.inference_mode():
            self._admit()
            for live in self.live:
                live.steps += 1
                if live.req.cancelled is not None and live.req.cancelled():
                    live.error = RequestCancelled()
                    for r in live.rows:
                        r.done = True
                elif live.steps > 2 * live.req.max_new_tokens + 8 * _MAX_BACKTRACKS:
                    for r in live.rows:
                        if not r.done:
                            r.fail(f"The SQL was not finished within {live.steps - 1} decoding steps.")
            bitmask = None
            if any(live.constrained for live in self.live):
                bitmask = allocate_token_bitmask(n, g.backend.llg_tokenizer.vocab_size)
                fill_token_bitmasks(g.executor, [(r.matcher, i) for i, (r, o) in enumerate(zip(self.rows, self.owner))
                                                 if r.matcher is not None and not r.done
                                                 and len(r.ids) >= len(o.req.forced)], bitmask)
            feed = torch.zeros((n, 1), dtype=torch.long, device=self.device)
            fed = torch.zeros((n, 1), dtype=torch.long, device=self.device)
            # the shipped SQL vocabulary's logits for every row in one product: each request used to multiply by
            # its own copy of those ~26k output rows, reading them once per request per step
            base = None
            if any(live.split is not None for live in self.live):
                base = g._logits(self.h, g._base_head[1], None)
            i = 0
            for live in self.live:   # rows of one request are contiguous: their logits in one product
                k = len(live.rows)
                if all(r.done for r in live.rows):
                    i += k
                    continue
                if live.split is None:
                    logits = g._logits(self.h[i:i + k], live.head, live.vocab)
                else:   # [k, len(vocab)] in vocab's order: the shared part and this request's extra tokens
                    logits = base.new_empty((k, live.vocab.shape[0]))
                    logits[:, live.split[0]] = base[i:i + k]
                    logits[:, live.split[1]] = g._logits(self.h[i:i + k], live.head, None)
                forced = live.req.forced
                for j, r in enumerate(live.rows):
                    if not r.done:
                        t = self._row_step(r, i + j, logits[j], bitmask, live, forced, tok)
                        if t is not None:
                            feed[i + j, 0], fed[i + j, 0] = t, 1
                            r.cache_pos.append(self.attn.shape[1])
                i += k
            if any(not r.done for r in self.rows):
                self.attn = torch.cat([self.attn, fed], dim=1)
                # a row's next position counts only its own kept tokens (masked holes do not advance it)
                pos = torch.tensor([[o.n_ids + len(r.ids) - 1] for r, o in zip(self.rows, self.owner)],
                                   device=self.device)
                mask = self.attn
                if self.shared:   # the same layout for every layer type; the window is applied per layer
                    step = self._cascade_step()
                    mask = {"full_attention": step, "sliding_attention": step}
                out = g.inner(input_ids=feed, attention_mask=mask, position_ids=pos,
                              past_key_values=self.cache, use_cache=True)
                self.cache, h_new = out.past_key_values, out.last_hidden_state[:, -1]
                for i, r in enumerate(self.rows):
                    if fed[i, 0]:
                        self.h[i] = h_new[i]
                    elif r.restore is not None:      # backtracked: continue from the hidden state kept there
                        self.h[i] = r.restore
                        self.attn[i, r.holes] = 0
                        r.restore, r.holes = None, []
            self._retire()

    @property
    def prefixes(self) -> list:
        """The distinct shared prefixes the batch's rows read (one copy each), in order of first use."""
        seen = {}
        for live in self.live:
            if live.prefix is not None and live.rows:
                seen.setdefault(id(live.prefix), live.prefix)
        return list(seen.values())

    def _cascade_step(self):
        """This step's CascadeStep: the rows' suffix mask and, per distinct prefix, the rows that read it."""
        import torch
        from .shared_prefix import CascadeStep
        plen = torch.tensor([o.prefix.length if o.prefix is not None else 0 for o in self.owner], dtype=torch.long)
        groups: dict = {}
        for i, o in enumerate(self.owner):
            if o.prefix is not None:
                groups.setdefault(id(o.prefix), (o.prefix, []))[1].append(i)
        return CascadeStep(self.attn, plen, [(torch.tensor(rows, dtype=torch.long), prefix)
                                             for prefix, rows in groups.values()])

    def _row_step(self, r, i, row_logits, bitmask, live, forced, tok):
        g = self.gen
        r.hist.append(self.h[i].clone())
        if len(r.ids) < len(forced):
            t = int(forced[len(r.ids)])
            if not r.accept(t, float("inf"), -1, 0.0, g._piece(t)):
                r.fail("A repair branch left the SQL grammar.")
                return None
        else:
            t = g._step(r, i, row_logits, self.h[i], bitmask, live.rng, live.req.temperature, len(forced), tok,
                        live.vocab)
        if t is None:
            return None   # backtracked, failed or stopped: nothing to feed this step
        if len(r.ids) >= live.req.max_new_tokens:
            r.fail(f"The SQL was cut off at {live.req.max_new_tokens} tokens.")
            return None
        if len(r.text) - len(r.text.rstrip()) > MAX_BLANK_RUN:
            r.fail("The model wrote only spaces and line breaks: the SQL was abandoned.")
            return None
        return t

    def _retire(self) -> None:
        """Move requests whose rows are all done out of the batch (their cache rows with them)."""
        import torch
        done = [live for live in self.live if all(r.done for r in live.rows)]
        if not done:
            return
        self._finished += [(live.handle, live) for live in done]
        keep = [i for i, o in enumerate(self.owner) if o not in done]
        self.live = [live for live in self.live if live not in done]
        if not keep:
            self.rows, self.owner, self.cache, self.attn, self.h = [], [], None, None, None
            return
        idx = torch.tensor(keep, device=self.device)
        self.rows = [self.rows[i] for i in keep]
        self.owner = [self.owner[i] for i in keep]
        self.attn, self.h = self.attn[idx], self.h[idx]
        # slots no remaining row uses (the padding a longer, finished request needed) are dropped from the left;
        # the kept rows and slots go into fresh buffers with room to grow, one copy per layer
        lead = int(self.attn.any(dim=0).long().argmax())
        width = self.attn.shape[1] - lead
        self.attn = self.attn[:, lead:]
        cap = _room_for(width)
        for layer in self.cache.layers:
            kbuf = layer.keys.new_empty((len(keep), layer.keys.shape[1], cap, layer.keys.shape[3]))
            vbuf = torch.empty_like(kbuf)
            torch.index_select(layer.keys[:, :, lead:], 0, idx, out=kbuf[:, :, :width])
            torch.index_select(layer.values[:, :, lead:], 0, idx, out=vbuf[:, :, :width])
            layer.adopt(kbuf, vbuf, width)
        if lead > 0:
            for r in self.rows:
                r.cache_pos = [p - lead for p in r.cache_pos]

    def pop_finished(self) -> list:
        """(handle, list of Generation) for each request finished since the last call; a cancelled request's
        entry is the RequestCancelled exception instead."""
        out = []
        for handle, live in self._finished:
            if live.error is not None:
                out.append((handle, live.error))
            else:
                seconds = time.perf_counter() - live.t0
                out.append((handle, [r.result(self.gen.decode, seconds, live.constrained) for r in live.rows]))
        self._finished = []
        return out


_MAX_BACKTRACKS = 6        # per row; past that the row decodes under the grammar alone
_KV_SLACK = 128            # free cache slots a layer keeps for the tokens still to come
_MIN_SKIP = 64             # a sliding layer reads from its window's first slot when that skips at least this many
_CANDIDATES_PER_STEP = 12  # tokens the binder may turn down at one step before it gives up on the row


def _room_for(slots: int) -> int:
    """Cache slots to allocate for a layer holding `slots`: spare room so appends write in place."""
    return slots + max(_KV_SLACK, slots // 8)


# llguidance's token bitmask (32 tokens per int32, bit set = allowed), handled in plain torch: the helpers in
# llguidance.torch wrap their kernel in torch.compile, whose import and first call cost about a second of every
# cold start (benchmarks/cold_start.py); these do the same operations eagerly, in well under a millisecond.
def allocate_token_bitmask(batch: int, vocab: int):
    import torch
    return torch.full((batch, (vocab + 31) // 32), -1, dtype=torch.int32)


def fill_token_bitmasks(executor, matchers: list, bitmask) -> None:
    """Row i of `bitmask` := the tokens matcher allows next, for each (matcher, i); llguidance computes them on
    its own threads (outside the GIL) and writes them in place."""
    if matchers:
        executor.unsafe_compute_mask_ptr(matchers, bitmask.data_ptr(), bitmask.shape[1] * 4, bitmask.shape[0])


def _apply_mask(scores, bitmask_row) -> None:
    """-inf where the bitmask forbids a token (1-D scores over the vocabulary's first ids)."""
    import torch
    width = bitmask_row.shape[0] * 32
    if scores.shape[0] > width:
        scores[width:] = float("-inf")
    n = min(width, scores.shape[0])
    bits = (bitmask_row.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    scores[:n].masked_fill_(bits.reshape(-1)[:n] == 0, float("-inf"))


# Spaces and line breaks in a row after which a candidate is abandoned: the grammar lets whitespace stand between
# any two tokens, and a sampled candidate can write nothing else until the token cap ("... WHERE x = 'a' NOT"
# followed by 150 tokens of "\n  "), holding its request's answer for seconds. Formatted SQL needs a handful.
MAX_BLANK_RUN = 16


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
