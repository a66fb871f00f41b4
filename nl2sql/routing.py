"""Confidence per answer, and routing the unsure ones to more compute.

`confidence()` scores an answer in [0, 1] from what the pipeline already knows about it:
  - agreement: the share of the decoded candidates whose result is the answer's (Answer.agreement / candidates);
  - token probability: the chosen candidate's mean per-token probability, exp(logprob / tokens);
  - margins: the share of its tokens that led the runner-up by at least SURE_MARGIN logits (tokens a repair
    forced, whose margin is infinite, are left out);
  - repairs: each repair decoding it took multiplies the score by REPAIR_FACTOR.
An answer with an error scores 0.

`route()` runs after the pipeline has its answer. Below NL2SQL_ESCALATE_BELOW it escalates:
  1. more candidates on the same model (NL2SQL_ESCALATE_CANDIDATES), voted on as usual;
  2. if still below, the larger backend (NL2SQL_ESCALATE_MODEL), a second pipeline over the same warehouses and
     schema subset (so the same prompt and grammar) whose model is loaded in this process on first use, or,
     for openai:URL, an OpenAI-compatible server (nl2sql/remote.py) sent that prompt and grammar over HTTP;
     either way its candidates are validated, voted on and run here, through the same guarded path.
An escalated answer replaces the first one unless it failed where the first did not. A larger backend that
fails to load or errors leaves the answer as it was, with Answer.route_note saying why; one that could not be
reached (or refused this client) is not asked again for a while (RETRY_DOWN_S, RETRY_REMOTE_S).
"""
from __future__ import annotations

import copy
import logging
import math
import threading
import time
import weakref

from .remote import SCHEME, RemoteGenerator, remote_base, shown

SURE_MARGIN = 2.0     # logits; a token that led its runner-up by less was a near toss-up
REPAIR_FACTOR = 0.7   # an answer that needed a repair decoding is less sure than one that did not
WEIGHTS = {"agreement": 0.5, "token_prob": 0.3, "margins": 0.2}

_larger: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # pipeline -> its larger-backend pipeline
_larger_lock = threading.Lock()
_down: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # pipeline -> (retry after, note) its larger one failed
RETRY_DOWN_S = 300.0  # a larger backend that failed to load is tried again after this many seconds
RETRY_REMOTE_S = 30.0  # a remote one that could not be reached or refused the key: a restart takes about this
log = logging.getLogger(__name__)


def features(answer, generation) -> dict:
    """The parts of the confidence of `answer`, whose SQL came from `generation` (an nl2sql.generate.Generation).

    >>> from nl2sql.generate import Generation
    >>> from nl2sql.api import Answer
    >>> g = Generation("SELECT 1", 2, 0.0, True, [1, 2], [5.0, 0.5], [-1, -1], logprob=-0.2)
    >>> f = features(Answer("q", agreement=3, candidates=4), g)
    >>> f["agreement"], round(f["token_prob"], 3), f["margins"], f["repairs"]
    (0.75, 0.905, 0.5, 0)
    """
    n = max(1, answer.candidates)
    tokens = max(1, len(generation.ids) or generation.tokens)
    decided = [m for m in generation.margins if math.isfinite(m)]
    return {
        "agreement": min(1.0, answer.agreement / n),
        "token_prob": math.exp(min(0.0, generation.logprob) / tokens),
        "margins": sum(m >= SURE_MARGIN for m in decided) / len(decided) if decided else 1.0,
        "repairs": max(0, answer.attempts - 1),
    }


def confidence(answer, generation) -> float:
    """How sure `answer` is, in [0, 1] (0 for an answer with an error); see the module docstring."""
    if answer.error is not None or generation is None:
        return 0.0
    f = features(answer, generation)
    score = sum(w * f[k] for k, w in WEIGHTS.items()) * REPAIR_FACTOR ** f["repairs"]
    return round(max(0.0, min(1.0, score)), 4)


def _who(generator) -> str:
    adapter = generator.adapter_name
    return f"{generator.model_name} + {adapter}" if adapter else str(generator.model_name)


_STATE = ("raw_sql", "sql", "df", "truncated", "agreement", "error", "error_type", "candidates", "attempts",
          "confidence", "answered_by")


def _snapshot(answer) -> dict:
    return {k: getattr(answer, k) for k in _STATE}


def _restore(answer, state: dict) -> None:
    for k, v in state.items():
        setattr(answer, k, v)


def route(pipe, q, schema, best):
    """Set q.answer's confidence and who answered; escalate when it is below NL2SQL_ESCALATE_BELOW.
    `best` is the outcome the pipeline chose on `schema`; returns the outcome the answer now holds."""
    s, a = pipe.settings, q.answer
    a.confidence = confidence(a, best.generation)
    a.answered_by = _who(pipe.generator)
    if s.escalate_below <= 0 or a.confidence >= s.escalate_below:
        return best
    with q.timer("escalate"):  # (its decoding, validation and execution also count in those stages' seconds)
        if s.escalate_candidates > a.candidates:
            best = _escalate(pipe, q, schema, best, s.escalate_candidates, "candidates")
        if s.escalate_model and a.confidence < s.escalate_below:
            failed = _down.get(pipe)
            if failed and time.monotonic() < failed[0]:
                a.route_note = failed[1]
                return best
            try:
                larger = larger_pipeline(pipe)
                best = _escalate(larger, q, schema, best, s.escalate_model_candidates or max(1, s.candidates), "model")
            except Exception as e:  # noqa: BLE001 - a larger backend that is down must never cost the answer
                a.route_note = (f"The larger model ({_where(s.escalate_model)}) could not answer: {_short(e).rstrip('.')}; "
                                "this is the small model's answer.")
                log.warning("escalation: %s", a.route_note)
                other = _larger.get(pipe)
                if other is None or other._generator is None:  # it did not load: do not retry on every question
                    _down[pipe] = (time.monotonic() + RETRY_DOWN_S, a.route_note)
                elif _unreachable(e):  # a remote one that is down or refuses us: not on every question either
                    _down[pipe] = (time.monotonic() + RETRY_REMOTE_S, a.route_note)
            else:
                if a.escalated == "model":
                    log.info("escalation: answered by %s at %s", a.answered_by, _where(s.escalate_model))
    return best


def _escalate(pipe, q, schema, best, n: int, how: str):
    """Answer again through `pipe` with n candidates; keep the new answer unless it failed where the old did not."""
    a = q.answer
    before = _snapshot(a)
    a.candidates, a.attempts = n, 1
    try:
        new = pipe._solve(q, schema)
    except BaseException:
        _restore(a, before)
        raise
    tried = before["attempts"] + a.attempts  # Answer.attempts counts every decoding, kept or not
    if new.error is not None and before["error"] is None:
        _restore(a, before)
        a.attempts = tried
        if how == "model":
            a.route_note = f"The larger model's SQL failed ({_short(new.error)}); this is the small model's answer."
        return best
    a.confidence = confidence(a, new.generation)  # repairs counted: this step's own
    a.attempts = tried
    a.answered_by = _who(pipe.generator)
    a.escalated = how
    return new


def larger_pipeline(pipe, generator=None):
    """The pipeline of the larger backend: NL2SQL_ESCALATE_MODEL (+ NL2SQL_ESCALATE_ADAPTER) behind the same
    warehouses, schemas and indexes as `pipe` (shared, not copied), its model loaded on first use.
    `generator` plugs in another backend (an nl2sql.generate.Generator, e.g. a scripted one in tests)."""
    with _larger_lock:
        other = _larger.get(pipe)
        if other is None or generator is not None:
            s = pipe.settings
            other = copy.copy(pipe)  # shares the caches (the same dict objects), so nothing is introspected twice
            other.settings = s.replace(model=s.escalate_model, adapter=s.escalate_adapter, escalate_below=0.0,
                                       ab_adapter="", ab_share=0.0)
            if (s.escalate_model, s.escalate_adapter) == (s.model, s.adapter):
                other._generator = pipe.generator   # the same model and adapter: no second copy in memory
            elif remote_base(s.escalate_model):
                other._generator = RemoteGenerator(s)  # nothing loaded here; the server is asked on first use
            else:
                other._generator = None             # loaded by the first escalation (Pipeline.generator)
            if generator is not None:
                other._generator = generator
            _larger[pipe] = other
        return other


def _where(spec: str) -> str:
    """NL2SQL_ESCALATE_MODEL as it may be shown (an openai: URL without user:password@)."""
    try:
        base = remote_base(spec)
    except Exception:  # noqa: BLE001 - a malformed openai: setting: say so without its text
        return "a malformed openai: URL"
    return f"{SCHEME}{shown(base)}" if base else spec


def _unreachable(e) -> bool:
    """A remote backend that is down, too slow, or refuses this client's key or model name."""
    from .errors import ConfigError, ConnectError
    return isinstance(e, (ConnectError, ConfigError))


def _short(e) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
