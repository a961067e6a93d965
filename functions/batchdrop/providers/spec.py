"""What batchdrop knows of one provider, in one frozen value: `ProviderSpec`.

Each provider's folder (`batchdrop/providers/<name>/`) defines its `SPEC` in `__init__.py` and its
client, the module that calls the provider's SDK, in `client.py`, imported only when a batch is sent
or looked at. Everything else (validation's dispatch, routing, the planner's limits, pricing, the
stack's settings and secrets, the local stack's environment) loops over the registered specs
(`batchdrop.providers.SPECS`). Nothing here, nor in a spec module, imports an SDK, batchdrop.config
or batchdrop.validation: config and validation import the specs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from batchdrop import models as m
    from batchdrop.reader import LineTooLong

MB = 1024 * 1024


@dataclass(frozen=True)
class BatchLimits:
    """How large one provider batch may be; the planner closes a batch before either is passed."""

    max_requests: int
    max_bytes: int
    # Bedrock refuses a job with fewer records than its per-model quota (100 by default).
    min_requests: int = 1
    # The embedding inputs one batch may hold, which OpenAI counts besides requests (None: not counted).
    max_inputs: int | None = None


class LineChecks(Protocol):
    """What a provider's line check needs of the validator (batchdrop.validation.Validator)."""

    anthropic_default_max_tokens: int

    def take_id(self, obj: dict[str, Any], number: int, required: bool, field: str = "custom_id") -> str: ...

    def enabled(self, provider: str, model: str) -> str: ...

    def request(
        self, number: int, custom_id: str, provider: str, group: str, model: str, payload: bytes
    ) -> m.Request: ...


@dataclass(frozen=True)
class LineShape:
    """A provider's own batch line, which validation passes to the provider (or to a provider that
    shares the shape, by the file's folder)."""

    # The line's fields; a line with any of `markers` is taken for this shape (shapes are tried in
    # the registry's order, the neutral line last).
    keys: frozenset[str]
    markers: frozenset[str]
    # The field that holds the line's id.
    id_field: str
    # How the unknown-format message names it: "an OpenAI batch line {custom_id, method, url, body}".
    described: str
    # (validator, line number, raw line, parsed line, provider it goes to) → the request, or raises
    # batchdrop.providers.lines.Reject.
    check: Callable[[LineChecks, int, bytes, dict[str, Any], str], m.Request]


class FastChecks(Protocol):
    """What a provider's fast path needs of the validator (batchdrop.validation.Validator), read once
    a block."""

    # The ids met so far; `remember` is False when it is a `NoIds` (duplicates are left to dedup).
    seen: set[str]
    remember: bool
    # The model names found good, by provider: a file repeats a handful.
    models_ok: dict[str, set[str]]

    def model_ok(self, provider: str, model: str) -> bool: ...

    def full(self, number: int, raw: bytes) -> m.Request | m.Invalid | None: ...

    def check(self, number: int, raw: bytes | LineTooLong) -> m.Request | m.Invalid | None: ...


# The requests of decoded batch lines: (validator, provider they go to, longest payload it may pass
# with its newline (-1: the provider is not enabled), number of the first line, raw lines, decoded
# lines (None: did not decode), every custom_id known to match the pattern, settle) → a verdict a line.
# A line that fails a check msgspec cannot make gets None, or with `settle` the verdict of the full
# check (of `check` for a line that did not decode: it may be of another shape).
#
# It runs once for every line of a file, the hot path of submit: what it uses is bound to locals
# first, and each shape has its own loop rather than one loop calling a per-shape function a line (a
# call costs a tenth of what a line may take). The validator calls it once a block.
Accept = Callable[
    [FastChecks, str, int, int, Sequence[bytes], Sequence[Any], bool, bool], "list[m.Request | m.Invalid | None]"
]


@dataclass(frozen=True)
class FastPath:
    """A line shape's fast path: the common case, a well-formed batch line, checked by msgspec against
    a strict schema in one pass (batchdrop.providers.fast), then by the shape's own loop for what
    msgspec cannot check. Validation decodes a whole block of short lines as one JSON array, a long
    line at a time, and a line on its own in the full schema; at the first doubt the full check
    says what is wrong."""

    # Bytes only a line of the shape holds (a key, quoted): a line, or a block by its first line,
    # with them goes to this fast path, the first in the registry's order that matches, and no other.
    marker: bytes
    # The strict schema's decoders: a line, and a block (a list of lines with numbers between them).
    line: Callable[[bytes], Any]
    lines: Callable[[bytes], list[Any]]
    accept: Accept
    # A schema of fewer fields the block paths try first, as `line` and `lines` (None: none): msgspec
    # fills in and frees every field a struct has, set or not. When a line needs the full schema, the
    # block paths try the full one first for a few blocks.
    narrow_line: Callable[[bytes], Any] | None = None
    narrow_lines: Callable[[bytes], list[Any]] | None = None


class Price(NamedTuple):
    """A model's real-time list prices in USD per million tokens, by kind of token, and what its batch work
    costs of them (docs/costs.md "Cached tokens").

    A rate left None is the input rate: cached input is then charged as any input (an upper bound, as
    before batchdrop read cache usage), and writing to a provider's cache costs nothing more, as
    OpenAI's writes did before GPT-5.6 and Gemini's do."""

    input: float
    output: float
    # Input read from the provider's prompt cache.
    cached_input: float | None = None
    # Input written to it (Anthropic's 5-minute writes, OpenAI's writes on the models that bill them).
    cache_write: float | None = None
    # Input written to it for an hour (Anthropic's 1-hour writes); None: `cache_write`.
    cache_write_1h: float | None = None
    # The share of these rates a batch request costs, for every kind of token: each provider's spec says
    # where its figure comes from.
    batch: float = 0.5


@dataclass(frozen=True, slots=True)
class Usage:
    """The tokens one answer was billed for, as its provider reported them, in one shape for all.

    `input_tokens` is every input token of the request: the provider's prompt tokens for OpenAI, Azure
    and Gemini (which count their cached tokens in them), and for Anthropic and Claude on Bedrock its
    `input_tokens` plus the cache reads and writes it reports apart from them. The cache figures are
    parts of `input_tokens`: `cached_input_tokens` read from the provider's cache,
    `cache_write_input_tokens` written to it, and of those `cache_write_1h_input_tokens` written for an
    hour (Anthropic's `cache_creation.ephemeral_1h_input_tokens`)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    cache_write_1h_input_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.cache_write_input_tokens + other.cache_write_input_tokens,
            self.cache_write_1h_input_tokens + other.cache_write_1h_input_tokens,
        )

    def line(self) -> dict[str, int]:
        """A result line's `usage`: input and output always, a cache figure only when it is not 0, so
        that the lines of requests that touched no cache read as they always did."""
        out = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        for name in CACHE_FIELDS:
            value = getattr(self, name)
            if value:
                out[name] = value
        return out

    def summary(self) -> dict[str, int]:
        """summary.json's `usage`: the four figures always; the 1-hour writes only when there were some."""
        out = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_input_tokens": self.cache_write_input_tokens,
        }
        if self.cache_write_1h_input_tokens:
            out["cache_write_1h_input_tokens"] = self.cache_write_1h_input_tokens
        return out

    @classmethod
    def of_line(cls, usage: Mapping[str, Any] | None) -> Usage:
        """The usage a result line's `usage` (or summary.json's) holds: absent figures are 0."""
        usage = usage or {}
        return cls(*(int(usage.get(name) or 0) for name in USAGE_FIELDS))


USAGE_FIELDS = tuple(f.name for f in fields(Usage))
CACHE_FIELDS = USAGE_FIELDS[2:]


# A neutral line as the provider's batch line: (line, messages, custom_id, model, default max_tokens)
# → (batch group, model, payload without its newline).
Translate = Callable[[dict[str, Any], list[dict[str, Any]], str, str, int], tuple[str, str, bytes]]
# A response body → (its text, the tokens it was billed for), or None when the body is not of this shape.
Reader = Callable[[dict[str, Any]], "tuple[str | None, Usage] | None"]
# A batch line of the provider's shape (parsed) → (the JSON Schema its answer must match, the forced tool
# whose input is the answer, or None when the answer is the text), or None when it asks for no schema
# (docs/contract.md "Structured outputs").
Asks = Callable[[dict[str, Any]], "tuple[dict[str, Any], str | None] | None"]
# (A response body, a forced tool's name) → that tool call's input, or None when the body has none.
ToolInput = Callable[[dict[str, Any], str], Any]


@dataclass(frozen=True)
class TokenFields:
    """Where `batchdrop validate`'s estimate finds a request's text and output cap in the line."""

    body: str  # the field of the line that holds the request
    text: tuple[str, ...] = ()  # fields of the request whose JSON counts as input
    configs: tuple[str, ...] = ()  # nested objects that hold sampling settings
    caps: tuple[str, ...] = ()  # the names of the output cap, in the order they are looked for


@dataclass(frozen=True)
class Option:
    """A setting the provider reads from BATCHDROP_<NAME>_<WHAT>, and how a deployment sets it."""

    what: str
    # The cdk.json context key that sets it (None: the stack sets it, or only the environment does).
    context: str | None = None
    # A whole number from 1 to the provider's maximum requests, rather than text.
    whole: bool = False
    # Text the value must start with when the provider is enabled, and how the error names the value.
    starts_with: str | None = None
    described: str = ""
    # Why the functions refuse to start without it (None: optional).
    required: str | None = None


@dataclass(frozen=True)
class LocalEnv:
    """How the local stack points the provider at the emulator."""

    # What BASE_URL is the emulator's address plus (None: no BASE_URL).
    base_path: str | None = ""
    # An environment variable that takes the emulator's address itself (boto3's service endpoint).
    endpoint_env: str | None = None
    # The same for the real-time API, when the SDK reaches it through another service's endpoint (Bedrock:
    # boto3's bedrock-runtime, which AWS_ENDPOINT_URL_BEDROCK does not point anywhere).
    runtime_endpoint_env: str | None = None
    # Other settings, as the stack would set them (BATCHDROP_<NAME>_<WHAT>).
    values: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    title: str  # as messages name it: "Bedrock"
    # "module:Class" of the client (batchdrop.providers.base.Provider), imported when it is used.
    client: str
    # "module:Class" of the emulator's plugin for this provider (batchdrop.local.emulator.Plugin).
    emulator: str
    # The documented maxima (docs/providers.md) and what a deployment uses unless it sets less.
    maxima: BatchLimits
    defaults: BatchLimits
    # Model-name prefixes that route a neutral line here.
    routes: tuple[str, ...] = ()
    # Real-time list prices per million tokens by kind, and the batch share, by model-name prefix.
    prices: Mapping[str, Price] = field(default_factory=dict)
    # A model name as the price table names it (a prefix or a region taken off), or None.
    price_model: Callable[[str], str] | None = None
    # Its own line shape; None for a provider that takes another's (`shape`).
    line: LineShape | None = None
    # "module:NAME" of its line shape's FastPath (None: every line of it gets the full check), loaded by
    # validation only: the functions that never validate a line (poll, complete) never build its schemas.
    fast: str | None = None
    # The provider whose line shape it takes (itself when it has its own).
    shape: str = ""
    # Neutral line → its batch line.
    translate: Translate | None = None
    # (check, what the message says it expects) for model names; None: the body rule.
    model_rule: tuple[Callable[[str], Any], str] | None = None
    # Readers of its response bodies (tried in the registry's order).
    readers: tuple[Reader, ...] = ()
    # The schema one of its batch lines asks its answer to match, and where a forced tool's answer is.
    asks: Asks | None = None
    tool_input: ToolInput | None = None
    tokens: TokenFields = field(default_factory=lambda: TokenFields(body="body"))
    # Whether it needs an API key (a secret per deployment), or signs with the functions' IAM role.
    needs_key: bool = True
    # Whether its batches carry our job id and batch key, so an orphan is found by its tag.
    tags_batches: bool = True
    options: tuple[Option, ...] = ()
    # Providers that may take its batches under its minimum (BATCHDROP_<NAME>_FALLBACK).
    # A converter per provider: (its batch line, its model) → (the other's model, its batch line), or
    # None for a request it cannot carry over.
    fallbacks: Mapping[str, Callable[[bytes, str], tuple[str, bytes] | None]] = field(default_factory=dict)
    local: LocalEnv = field(default_factory=LocalEnv)
    # What carries the inputs `max_inputs` counts: (the batch group's prefix, its batch line → its inputs),
    # for a request whose count validation did not keep (sent again from a stored batch, or converted
    # for a fallback); None: the provider counts none.
    inputs: tuple[str, Callable[[bytes], int]] | None = None
    # How long the provider lets a batch run before it expires it (None: until it is cancelled, as
    # Azure's). BATCHDROP_<NAME>_WINDOW_HOURS overrides it; past it and a grace, batchdrop cancels the
    # batch, keeps what it finished and sends the rest again.
    window_hours: float | None = 24
    # What the provider's queue quota counts (BATCHDROP_<NAME>_MAX_ENQUEUED is in this unit): input
    # "tokens" enqueued (OpenAI, Azure, Gemini), "requests" waiting (Anthropic), or "batches" in
    # progress (Bedrock's concurrent jobs).
    quota_unit: str = "requests"
    # "module:Class" of its real-time client (batchdrop.providers.base.RealtimeClient), imported by the
    # real-time lane's function only.
    realtime: str = ""

    def env_var(self, what: str) -> str:
        return env_var(self.name, what)


ENV_PROVIDER_TEMPLATE = "BATCHDROP_{name}_{what}"


def env_var(provider: str, what: str) -> str:
    """BATCHDROP_<NAME>_<WHAT>: the per-provider variables batchdrop.config reads."""
    return ENV_PROVIDER_TEMPLATE.format(name=provider.upper(), what=what)


def provider_env(provider: str, values: Mapping[str, str | None]) -> dict[str, str]:
    """The environment for one provider's settings ({WHAT: value}; unset values left out): the one
    mapping the CDK stack (infra/constructs/functions.py) and the local stack both use."""
    return {env_var(provider, what): value for what, value in values.items() if value}
