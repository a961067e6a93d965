"""A catalogue of bad input lines and bad files, each with the exact outcome docs/contract.md promises for it.

Each `Case` is one uploaded file: its bytes (built lazily when large), its key suffix, and for every
non-blank physical line what must become of it: "ok" (a line of results.jsonl) or the error code of
its line in errors.jsonl. Blank lines are simply absent from `lines`. The tests in
tests/integration/test_bad_input.py upload every case to the embedded stack at once and check each.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchdrop import models as m
from tests.lines import anthropic_line, neutral_line, openai_line

OK = "ok"
MB = 1024 * 1024
BOM = b"\xef\xbb\xbf"
MSGS = b'[{"role":"user","content":"hi"}]'


@dataclass
class Outcome:
    """What the pipeline produced for one case: read once, asserted by the tests."""

    key: str
    job: dict[str, Any]
    results: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    summary: dict[str, Any]
    notifications: list[dict[str, Any]]
    # The provider batch files batchdrop planned for the job (work/<job_id>/batches/*.jsonl), parsed.
    submitted: list[dict[str, Any]]


@dataclass
class Case:
    name: str
    data: bytes | Callable[[], bytes]
    lines: Mapping[int, str]  # line → OK or the error code of its line
    status: str
    suffix: str = ".jsonl"
    policy: str = "skip"
    # line → a few words its error message must contain
    messages: Mapping[int, str] = field(default_factory=dict)
    # line → the custom_id its output line must carry
    custom_ids: Mapping[int, str | None] = field(default_factory=dict)
    # words the summary's reason must contain (rejected jobs)
    reason: str | None = None
    check: Callable[[Outcome], None] | None = None

    @property
    def key(self) -> str:
        return f"inputs/bad/{self.policy}/{self.name}{self.suffix}"

    def content(self) -> bytes:
        return self.data() if callable(self.data) else self.data


# -- line builders ----------------------------------------------------------------------------------


def oa(custom_id: Any, text: str = "hello", model: str = "gpt-4o-mini", **body: Any) -> bytes:
    line = openai_line("x", model, text, **body)
    line["custom_id"] = custom_id
    return orjson.dumps(line)


def an(custom_id: Any, text: str = "hello", **params: Any) -> bytes:
    line = anthropic_line("x", text=text, **params)
    line["custom_id"] = custom_id
    return orjson.dumps(line)


def ne(model: str = "gpt-4o-mini", text: str = "hello", **extra: Any) -> bytes:
    return orjson.dumps(neutral_line(model, text, **extra))


def raw_openai(custom_id: bytes, body: bytes) -> bytes:
    """An OpenAI batch line written by hand, for what a serialiser would never produce."""
    return b'{"custom_id":' + custom_id + b',"method":"POST","url":"/v1/chat/completions","body":' + body + b"}"


def join(*lines: bytes, end: bytes = b"\n") -> bytes:
    return b"\n".join(lines) + end


def numbered(lines: list[bytes]) -> dict[int, bytes]:
    return dict(enumerate(lines, start=1))


# -- generated content ------------------------------------------------------------------------------


HUGE_HEAD = b'{"custom_id":"huge","model":"gpt-4o-mini","messages":[{"role":"user","content":"'
HUGE_SIZE = len(HUGE_HEAD) + 32 * MB + 1024 + 4


def huge_line() -> bytes:
    """A neutral line just over the reader's 32 MB cap (built in memory, never committed)."""
    return HUGE_HEAD + b"x" * (32 * MB + 1024) + b'"}]}'


def huge_file() -> bytes:
    return join(oa("g1"), huge_line(), oa("g2"))


def giant_valid_line() -> bytes:
    """One valid 3 MB request, no newline at the end: a file of one giant line."""
    return ne(text="y" * (3 * MB), custom_id="giant")


def _truncated_gzip() -> tuple[bytes, dict[int, str]]:
    """A gzip file cut in the middle of its compressed stream, and what each line must become.

    Lines read in full before the cut keep their own verdict (a valid one is reported `file_rejected`,
    since the job as a whole is rejected); the line where reading stopped gets the file's error.
    """
    plain = [oa(f"tg{i}", text=f"request number {i} of the truncated file, {i * 7919 % 1000}") for i in range(60)]
    plain[2] = b""
    plain[4] = b"{broken json"
    content = join(*plain)
    packed = gzip.compress(content, mtime=0)
    cut = packed[: len(packed) * 6 // 10]
    readable = zlib.decompressobj(wbits=31).decompress(cut)
    assert 0.3 < len(readable) / len(content) < 0.9, "the cut must fall in the middle of the data"
    complete = readable.count(b"\n")
    lines: dict[int, str] = {}
    for number, line in numbered(plain).items():
        if number > complete or not line:
            continue
        lines[number] = m.INVALID_JSON if line.startswith(b"{broken") else m.FILE_REJECTED
    lines[complete + 1] = m.INVALID_ENCODING
    return cut, lines


def _gzip_bomb(head: bytes, newlines: int) -> bytes:
    """`head`, a newline, then `newlines` more, gzipped as they are made (about 1,000x)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [packer.compress(head + b"\n")]
    parts.extend(packer.compress(b"\n" * MB) for _ in range(newlines // MB))
    return b"".join([*parts, packer.flush()])


def _bad_checksum_gzip() -> bytes:
    packed = gzip.compress(join(oa("crc1"), b"", oa("crc2"), b"[]"), mtime=0)
    crc = packed[-8:-4]
    return packed[:-8] + bytes(b ^ 0xFF for b in crc) + packed[-4:]


def _pretty_printed() -> tuple[bytes, dict[int, str]]:
    text = orjson.dumps(orjson.loads(oa("pretty")), option=orjson.OPT_INDENT_2) + b"\n"
    return text, {n: m.INVALID_JSON for n in range(1, text.count(b"\n") + 1)}


TRUNCATED_GZIP, TRUNCATED_GZIP_LINES = _truncated_gzip()
PRETTY, PRETTY_LINES = _pretty_printed()
UTF16 = (b"\n".join([oa("w1"), oa("w2")]) + b"\n").decode().encode("utf-16")
PDF_LIKE = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\nstream\n"
    b"x\x9c\xff\x00\x10\x80\x81\x82\nendstream\n%%EOF"
)
DEEP_ARRAYS = b"[" * 10_000 + b"]" * 10_000
DEEP_OBJECTS = b'{"a":' * 10_000 + b"1" + b"}" * 10_000


# -- checks beyond codes and line numbers ------------------------------------------------------------


def _by_custom_id(outcome: Outcome) -> dict[str, dict[str, Any]]:
    return {r["custom_id"]: r for r in outcome.results}


def check_duplicate_keys(outcome: Outcome) -> None:
    """Duplicate keys: the last value wins, in what we validate and in what the provider is sent."""
    results = _by_custom_id(outcome)
    assert set(results) == {"dk-openai", "line-2", "dk-last"}
    first = results["dk-openai"]
    assert first["model"].startswith("gpt-4.1-mini")
    assert first["text"] == "echo: second"
    routed = results["line-2"]
    assert routed["provider"] == "openai"
    assert routed["text"] == "echo: second"
    assert results["dk-last"]["line"] == 3
    sent = {r["custom_id"]: r for r in outcome.submitted}
    assert sent["line-2"]["body"]["model"] == "gpt-4o-mini"
    assert sent["line-2"]["body"]["messages"] == [{"role": "user", "content": "second"}]


def check_anthropic_default_max_tokens(outcome: Outcome) -> None:
    sent = {r["custom_id"]: r for r in outcome.submitted}
    assert sent["an-default"]["params"]["max_tokens"] == 1024
    assert sent["an-explicit"]["params"]["max_tokens"] == 64
    assert sent["line-9"]["params"]["max_tokens"] == 1024
    assert all(r["provider"] == "anthropic" for r in outcome.results if r["custom_id"] != "line-10")


def check_plain_text_gz(outcome: Outcome) -> None:
    assert outcome.job["output_prefix"] == f"outputs/bad/skip/gz-that-is-plain-text/{outcome.job['job_id']}/"


def check_nul_escape_is_data(outcome: Outcome) -> None:
    (sent,) = outcome.submitted
    assert sent["body"]["messages"][0]["content"] == "a\x00b"


def check_reject_sent_nothing(outcome: Outcome) -> None:
    assert outcome.submitted  # the valid lines were planned into batches...
    assert all(b["batch_id"] is None for b in outcome.summary["batches"])  # ...and none was sent
    assert all(e["stage"] == "validation" for e in outcome.errors)


def check_giant_line(outcome: Outcome) -> None:
    (result,) = outcome.results
    assert result["usage"]["input_tokens"] > 100_000


# -- the catalogue ----------------------------------------------------------------------------------

E = m  # the codes, short
CASES: list[Case] = [
    # Encodings
    Case(
        "invalid-utf8-bytes",
        join(
            oa("u1"),
            raw_openai(b'"u2"', b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"a\xff\xfe"}]}'),
            b"\x80" + oa("u3"),
            oa("u4"),
        ),
        {1: OK, 2: E.INVALID_ENCODING, 3: E.INVALID_ENCODING, 4: OK},
        "partial",
        messages={2: "UTF-8", 3: "byte 1 "},
        custom_ids={1: "u1", 2: None, 4: "u4"},
    ),
    Case(
        "latin1-text",
        join(oa("l1"), oa("l2", text="café crème").decode().encode("latin-1"), oa("l3")),
        {1: OK, 2: E.INVALID_ENCODING, 3: OK},
        "partial",
        messages={2: "save the file as UTF-8"},
    ),
    # UTF-16 splits on the 0x0A byte of "\n\0": the BOM line is not UTF-8, the next lines start with
    # the NUL of the previous newline (valid UTF-8, not JSON), and the file's last byte is a lone NUL.
    Case(
        "utf16-with-bom",
        UTF16,
        {1: E.INVALID_ENCODING, 2: E.INVALID_JSON, 3: E.INVALID_JSON},
        "rejected",
        messages={1: "UTF-8"},
        reason="no valid request",
    ),
    Case("utf8-bom-at-start", BOM + join(oa("b1"), oa("b2")), {1: OK, 2: OK}, "completed", custom_ids={1: "b1"}),
    Case("utf8-bom-only", BOM, {}, "rejected", reason="empty"),
    Case("utf8-bom-then-blank-lines", BOM + b"\n \n\t\n", {}, "rejected", reason="empty"),
    Case(
        "bom-in-the-middle",
        join(oa("m1"), BOM + oa("m2"), oa("m3")),
        {1: OK, 2: E.INVALID_JSON, 3: OK},
        "partial",
        messages={2: "BOM"},
    ),
    Case("two-boms-at-start", BOM + BOM + join(oa("bb1")), {1: E.INVALID_JSON}, "rejected", messages={1: "BOM"}),
    # Line endings
    Case(
        "crlf-endings",
        b"\r\n".join([oa("c1"), oa("c2"), b"", oa("c3")]) + b"\r\n",
        {1: OK, 2: OK, 4: OK},
        "completed",
        custom_ids={1: "c1", 2: "c2", 4: "c3"},
    ),
    Case(
        "lone-cr-between-two-objects",
        join(oa("r1") + b"\r" + oa("r2"), oa("r3")),
        {1: E.INVALID_JSON, 2: OK},
        "partial",
        messages={1: "unexpected content after document"},
    ),
    Case(
        "lone-cr-as-json-whitespace",
        join(oa("r4").replace(b',"method"', b',\r"method"')),
        {1: OK},
        "completed",
        custom_ids={1: "r4"},
    ),
    Case("cr-only-line-endings", b"\r".join([oa("r5"), oa("r6")]) + b"\r", {1: E.INVALID_JSON}, "rejected"),
    # Issue 13: the error of a file with CR-only line endings says so
    Case(
        "cr-only-line-endings-explained",
        b"\r".join([oa("r7"), oa("r8"), oa("r9")]) + b"\r",
        {1: E.INVALID_JSON},
        "rejected",
        messages={1: "3 carriage returns"},
    ),
    # Issue 13: line 3 has no custom_id and is given "line-3", which line 1 uses: the error says so
    Case(
        "generated-id-collides-with-a-custom-id",
        join(ne(custom_id="line-3"), oa("gc2"), ne()),
        {1: OK, 2: OK, 3: E.DUPLICATE_CUSTOM_ID},
        "partial",
        messages={3: "line 3 has no custom_id, so it was given 'line-3', which line 1 already uses"},
        custom_ids={1: "line-3", 3: "line-3"},
    ),
    # NUL bytes: raw ones are not JSON; an escaped one inside a string is data
    Case(
        "nul-bytes",
        join(
            oa("z1") + b"\x00",
            b"\x00",
            b"\x00" * 5,
            raw_openai(b'"z2\x00"', b'{"model":"gpt-4o-mini"}'),
            oa("z3", text="a\x00b"),
        ),
        {1: E.INVALID_JSON, 2: E.INVALID_JSON, 3: E.INVALID_JSON, 4: E.INVALID_JSON, 5: OK},
        "partial",
        check=check_nul_escape_is_data,
    ),
    # Sizes
    Case(
        "line-over-32mb",
        huge_file,
        {1: OK, 2: E.REQUEST_TOO_LARGE, 3: OK},
        "partial",
        messages={2: f"{HUGE_SIZE:,} bytes"},
        custom_ids={1: "g1", 2: None, 3: "g2"},
    ),
    Case(
        "one-giant-valid-line", giant_valid_line, {1: OK}, "completed", custom_ids={1: "giant"}, check=check_giant_line
    ),
    # JSON that is not JSON
    Case(
        "deep-nesting",
        join(
            DEEP_ARRAYS,
            DEEP_OBJECTS,
            oa("d1"),
            ne(tools=[{"name": "t", "parameters": {}}]).replace(b"{}", b"[" * 5000 + b"]" * 5000),
        ),
        {1: E.INVALID_JSON, 2: E.INVALID_JSON, 3: OK, 4: E.INVALID_JSON},
        "partial",
        messages={1: "depth limit", 2: "depth limit", 4: "depth limit"},
    ),
    Case(
        "nan-and-infinity",
        join(
            b'{"model":"gpt-4o-mini","messages":' + MSGS + b',"temperature":NaN}',
            b'{"model":"gpt-4o-mini","messages":' + MSGS + b',"temperature":Infinity}',
            b'{"model":"gpt-4o-mini","messages":' + MSGS + b',"temperature":-Infinity}',
            b"NaN",
            oa("nan-ok"),
        ),
        {1: E.INVALID_JSON, 2: E.INVALID_JSON, 3: E.INVALID_JSON, 4: E.INVALID_JSON, 5: OK},
        "partial",
    ),
    Case(
        "duplicate-keys",
        join(
            raw_openai(
                b'"dk-openai"',
                b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"first"}],'
                b'"model":"gpt-4.1-mini","messages":[{"role":"user","content":"second"}]}',
            ),
            b'{"model":"claude-haiku-4-5","messages":[{"role":"user","content":"first"}],'
            b'"model":"gpt-4o-mini","messages":[{"role":"user","content":"second"}]}',
            raw_openai(b'"dk-first","custom_id":"dk-last"', b'{"model":"gpt-4o-mini","messages":' + MSGS + b"}"),
        ),
        {1: OK, 2: OK, 3: OK},
        "completed",
        check=check_duplicate_keys,
    ),
    Case(
        "trailing-commas",
        join(oa("tc1")[:-1] + b",}", b"[1,2,]", oa("tc2")),
        {1: E.INVALID_JSON, 2: E.INVALID_JSON, 3: OK},
        "partial",
        messages={1: "trailing comma", 2: "trailing comma"},
    ),
    Case(
        "single-quoted-json",
        join(b"{'custom_id': 'sq1', 'model': 'gpt-4o-mini', 'messages': []}", oa("sq2")),
        {1: E.INVALID_JSON, 2: OK},
        "partial",
    ),
    Case(
        "two-objects-on-one-line",
        join(oa("p1") + oa("p2"), oa("p3") + b" " + oa("p4"), oa("p5")),
        {1: E.INVALID_JSON, 2: E.INVALID_JSON, 3: OK},
        "partial",
        custom_ids={3: "p5"},
    ),
    Case(
        "json-values-that-are-not-objects",
        join(b"[]", b"[1, 2]", b"42", b"-1.5e3", b'"a string"', b"null", b"true", b"false", oa("v1")),
        {**{n: E.NOT_AN_OBJECT for n in range(1, 9)}, 9: OK},
        "partial",
        messages={1: "array", 3: "number", 5: "string", 6: "null", 7: "boolean"},
    ),
    Case(
        "objects-of-no-known-shape",
        join(b"{}", b'{"custom_id":"x1","prompt":"hi"}', b'{"input":"x"}', oa("x2")),
        {1: E.UNKNOWN_FORMAT, 2: E.UNKNOWN_FORMAT, 3: E.UNKNOWN_FORMAT, 4: OK},
        "partial",
        messages={1: "keys found: none", 2: "custom_id, prompt"},
        custom_ids={1: None, 2: "x1", 3: None},
    ),
    Case(
        "lone-surrogate-escape",
        join(
            raw_openai(b'"ls1"', b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\\ud800"}]}'), oa("ls2")
        ),
        {1: E.INVALID_JSON, 2: OK},
        "partial",
    ),
    # Files with no request at all
    Case("empty-file", b"", {}, "rejected", reason="empty"),
    Case("only-blank-lines", b"\n  \n\t\n\r\n \t \r\n\n", {}, "rejected", reason="empty"),
    Case(
        "blank-lines-in-the-middle",
        join(oa("w1"), b"   ", b"\t", oa("w2"), b"", b" \t \r", oa("w3")),
        {1: OK, 4: OK, 7: OK},
        "completed",
        custom_ids={1: "w1", 4: "w2", 7: "w3"},
    ),
    Case("tab-only-line", join(b"\t", oa("t1")), {2: OK}, "completed", custom_ids={2: "t1"}),
    Case(
        "no-trailing-newline",
        join(oa("n1"), b"", oa("n2"), end=b""),
        {1: OK, 3: OK},
        "completed",
        custom_ids={3: "n2"},
    ),
    Case(
        "invalid-last-line-without-newline",
        join(oa("n3"), b'{"custom_id":', end=b""),
        {1: OK, 2: E.INVALID_JSON},
        "partial",
    ),
    # Gzip
    Case(
        "truncated-gzip",
        TRUNCATED_GZIP,
        TRUNCATED_GZIP_LINES,
        "rejected",
        suffix=".jsonl.gz",
        messages={max(TRUNCATED_GZIP_LINES): "gzip"},
        reason="truncated",
    ),
    Case(
        "gzip-with-a-wrong-checksum",
        _bad_checksum_gzip(),
        # zlib checks the CRC in the same call that inflates this small file: no line is trusted
        {1: E.INVALID_ENCODING},
        "rejected",
        suffix=".jsonl.gz",
        messages={1: "incorrect data check"},
    ),
    Case(
        "corrupt-gzip",
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03this is not deflate data",
        {1: E.INVALID_ENCODING},
        "rejected",
        suffix=".jsonl.gz",
        messages={1: "gzip"},
    ),
    Case(
        "gz-that-is-plain-text",
        join(oa("gp1"), oa("gp2")),
        {1: OK, 2: OK},
        "completed",
        suffix=".jsonl.gz",
        check=check_plain_text_gz,
    ),
    Case("gzip-of-an-empty-file", gzip.compress(b"", mtime=0), {}, "rejected", suffix=".jsonl.gz", reason="empty"),
    Case(
        "gzip-concatenated-members",
        gzip.compress(join(oa("gm1"), b""), mtime=0) + gzip.compress(join(b"oops", oa("gm2")), mtime=0),
        {1: OK, 3: E.INVALID_JSON, 4: OK},
        "partial",
        suffix=".jsonl.gz",
    ),
    Case(
        "gzip-with-bom-and-crlf",
        gzip.compress(BOM + b"\r\n".join([oa("gb1"), b"", oa("gb2")]) + b"\r\n", mtime=0),
        {1: OK, 3: OK},
        "completed",
        suffix=".jsonl.gz",
    ),
    # Issue 13: a gzip bomb (one request, then 80 MB of newlines in 80 KB) is refused by the default
    # ratio bound once past 8 MB, in a second; no line is made up for its blank lines
    Case(
        "gzip-bomb-of-newlines",
        lambda: _gzip_bomb(oa("bomb1"), 80 * MB),
        {1: E.FILE_REJECTED},
        "rejected",
        suffix=".jsonl.gz",
        reason="compression bomb",
    ),
    # Issue 13: all the data, but not the CRC32 and size that would prove it whole: each line once
    Case(
        "gzip-missing-its-trailer",
        gzip.compress(join(oa("mt1"), b"", oa("mt2")), mtime=0)[:-8],
        {1: E.FILE_REJECTED, 3: E.FILE_REJECTED},
        "rejected",
        suffix=".jsonl.gz",
        reason="last 8 bytes",
    ),
    # Files that are not JSONL at all
    Case(
        "csv-saved-as-jsonl",
        b'id,prompt\n1,hello world\n2,"quoted, text"\n42\n',
        {1: E.INVALID_JSON, 2: E.INVALID_JSON, 3: E.INVALID_JSON, 4: E.NOT_AN_OBJECT},
        "rejected",
    ),
    Case(
        "pdf-like-binary",
        PDF_LIKE,
        {
            1: E.INVALID_JSON,
            2: E.INVALID_ENCODING,
            3: E.INVALID_JSON,
            4: E.INVALID_JSON,
            5: E.INVALID_JSON,
            6: E.INVALID_JSON,
            7: E.INVALID_ENCODING,
            8: E.INVALID_JSON,
            9: E.INVALID_JSON,
        },
        "rejected",
    ),
    Case(
        "one-json-array-of-objects",
        b"[" + oa("ja1") + b"," + oa("ja2") + b"]\n",
        {1: E.NOT_AN_OBJECT},
        "rejected",
        messages={1: "array"},
    ),
    Case("pretty-printed-json", PRETTY, PRETTY_LINES, "rejected"),
    # custom_id rules
    Case(
        "custom-id-rules",
        join(
            oa("c" * 64),
            oa("c" * 65),
            oa("has space"),
            oa(7),
            oa(None),
            orjson.dumps({k: v for k, v in orjson.loads(oa("gone")).items() if k != "custom_id"}),
            oa(""),
            oa("réponse"),
            oa("../etc"),
            ne(custom_id=None),
            ne(custom_id=12),
            an("a b"),
            oa("ends-with-newline\n"),
        ),
        {
            1: OK,
            2: E.INVALID_CUSTOM_ID,
            3: E.INVALID_CUSTOM_ID,
            4: E.INVALID_CUSTOM_ID,
            5: E.MISSING_CUSTOM_ID,
            6: E.MISSING_CUSTOM_ID,
            7: E.INVALID_CUSTOM_ID,
            8: E.INVALID_CUSTOM_ID,
            9: E.INVALID_CUSTOM_ID,
            10: OK,
            11: E.INVALID_CUSTOM_ID,
            12: E.INVALID_CUSTOM_ID,
            13: E.INVALID_CUSTOM_ID,
        },
        "partial",
        custom_ids={1: "c" * 64, 2: "c" * 65, 3: "has space", 4: None, 5: None, 10: "line-10", 11: None, 12: "a b"},
    ),
    Case(
        "duplicate-custom-id",
        join(oa("dup"), oa("dup"), an("dup"), ne(custom_id="dup"), oa("other")),
        {1: OK, 2: E.DUPLICATE_CUSTOM_ID, 3: E.DUPLICATE_CUSTOM_ID, 4: E.DUPLICATE_CUSTOM_ID, 5: OK},
        "partial",
        custom_ids={1: "dup", 2: "dup", 3: "dup", 4: "dup", 5: "other"},
        messages={2: "'dup'", 3: "'dup'"},
    ),
    # Request fields, by shape
    Case(
        "openai-line-errors",
        join(
            oa("o1").replace(b'"POST"', b'"GET"'),
            orjson.dumps({k: v for k, v in orjson.loads(oa("o2")).items() if k != "method"}),
            oa("o3").replace(b"/v1/chat/completions", b"/v1/files"),
            oa("o4").replace(b"/v1/chat/completions", b"/v1/messages"),
            raw_openai(b'"o5"', b'"a string"'),
            raw_openai(b'"o6"', b"[]"),
            raw_openai(b'"o7"', b'{"messages":' + MSGS + b"}"),
            raw_openai(b'"o8"', b'{"model":42,"messages":' + MSGS + b"}"),
            oa("o9", stream=True),
            oa("o10")[:-1] + b',"extra":1}',
            oa("o11"),
        ),
        {
            1: E.INVALID_REQUEST,
            2: E.INVALID_REQUEST,
            3: E.UNSUPPORTED_ENDPOINT,
            4: E.UNSUPPORTED_ENDPOINT,
            5: E.INVALID_REQUEST,
            6: E.INVALID_REQUEST,
            7: E.MISSING_MODEL,
            8: E.INVALID_REQUEST,
            9: E.INVALID_REQUEST,
            10: E.INVALID_REQUEST,
            11: OK,
        },
        "partial",
        messages={1: '"GET"', 3: "/v1/files", 5: "got a string", 6: "got an array", 9: "stream", 10: "extra"},
        custom_ids={1: "o1", 3: "o3", 7: "o7", 11: "o11"},
    ),
    Case(
        "anthropic-line-errors",
        join(
            b'{"custom_id":"a1","params":{"max_tokens":5,"messages":' + MSGS + b"}}",
            an("a2", stream=True),
            b'{"custom_id":"a3","params":"claude"}',
            b'{"custom_id":"a4","params":{"model":"claude-haiku-4-5","max_tokens":5,"messages":[]}}',
            an("a5", max_tokens=0),
            b'{"params":{"model":"claude-haiku-4-5","max_tokens":5,"messages":' + MSGS + b"}}",
            b'{"custom_id":"an-default","params":{"model":"claude-haiku-4-5","messages":' + MSGS + b"}}",
            an("an-explicit"),
            ne("claude-haiku-4-5"),
            ne("gpt-4o-mini"),
        ),
        {
            1: E.MISSING_MODEL,
            2: E.INVALID_REQUEST,
            3: E.INVALID_REQUEST,
            4: E.INVALID_REQUEST,
            5: E.INVALID_REQUEST,
            6: E.MISSING_CUSTOM_ID,
            7: OK,
            8: OK,
            9: OK,
            10: OK,
        },
        "partial",
        messages={2: "stream", 5: "max_tokens"},
        check=check_anthropic_default_max_tokens,
    ),
    Case(
        "neutral-line-errors",
        join(
            b'{"messages":' + MSGS + b"}",
            ne("llama-3-70b"),
            ne(""),
            ne(stream=True),
            ne(messages=[]),
            ne(messages="hi"),
            ne(messages=[{"role": "tool", "content": "x"}]),
            ne(temperature=5),
            ne("gpt-4o-mini", custom_id="nl-ok"),
        ),
        {
            1: E.MISSING_MODEL,
            2: E.UNKNOWN_PROVIDER,
            3: E.MISSING_MODEL,
            4: E.INVALID_REQUEST,
            5: E.INVALID_REQUEST,
            6: E.INVALID_REQUEST,
            7: E.INVALID_REQUEST,
            8: E.INVALID_REQUEST,
            9: OK,
        },
        "partial",
        messages={2: "llama-3-70b", 4: "stream"},
    ),
    # Issue 13: values a provider or our own sending would choke on after validation
    Case(
        "numbers-beyond-a-double-or-64-bits",
        join(
            raw_openai(
                b'"nb1"',
                b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":[{"type":"text",'
                b'"text":"x","n":1e999}]}]}',
            ),
            raw_openai(b'"nb2"', b'{"model":"gpt-4o-mini","messages":' + MSGS + b',"logit_bias":{"1":-1E+400}}'),
            b'{"custom_id":"nb3","params":{"model":"claude-haiku-4-5","max_tokens":123456789012345678901234567890,'
            b'"messages":' + MSGS + b"}}",
            b'{"model":"gpt-4o-mini","messages":' + MSGS + b',"temperature":1' + b"0" * 400 + b"}",
            b'{"model":"claude-haiku-4-5","messages":' + MSGS + b',"max_tokens":99999999999999999999}',
            oa("nb-ok"),
        ),
        {1: E.INVALID_JSON, 2: E.INVALID_JSON, 3: E.INVALID_REQUEST, 4: E.INVALID_JSON, 5: E.INVALID_REQUEST, 6: OK},
        "partial",
        messages={1: "64-bit float", 2: "64-bit float", 3: "params.max_tokens", 4: "64-bit float", 5: "at most"},
        custom_ids={3: "nb3", 6: "nb-ok"},
    ),
    Case(
        "nesting-past-the-depth-limit",
        join(
            b'{"custom_id":"dn1","model":"gpt-4o-mini","messages":' + b"[" * 1000 + b"]" * 1000 + b"}",
            raw_openai(
                b'"dn2"', b'{"model":"gpt-4o-mini","messages":' + MSGS + b',"x":' + b"[" * 1000 + b"]" * 1000 + b"}"
            ),
            b'{"custom_id":"dn3","params":{"model":"claude-haiku-4-5","max_tokens":5,"messages":[{"role":"user",'
            b'"content":' + b"[" * 300 + b"]" * 300 + b"}]}}",
            oa("dn-ok"),
        ),
        {1: E.INVALID_JSON, 2: E.INVALID_JSON, 3: E.INVALID_JSON, 4: OK},
        "partial",
        messages={1: "254 levels", 2: "254 levels", 3: "254 levels"},
    ),
    Case(
        "model-names-no-provider-takes",
        join(
            b'{"key":"mn1","request":{"model":"gemini-2.5-flash#x","contents":[{"role":"user","parts":[{"text":"hi"}]}]}}',
            b'{"key":"mn2","request":{"model":"gemini-2.5-flash/x","contents":[{"role":"user","parts":[{"text":"hi"}]}]}}',
            b'{"key":"mn3","request":{"model":"gemini?x=1","contents":[{"role":"user","parts":[{"text":"hi"}]}]}}',
            b'{"key":"mn4","request":{"model":"../gemini","contents":[{"role":"user","parts":[{"text":"hi"}]}]}}',
            b'{"recordId":"mn5","modelId":"not a bedrock model","modelInput":{"messages":[]}}',
            ne("gpt-" + "x" * 300_000, custom_id="mn6"),
            ne("gemini-2.5-flash#x", custom_id="mn7"),
            oa("mn-ok"),
        ),
        {**{n: E.INVALID_REQUEST for n in range(1, 8)}, 8: OK},
        "partial",
        messages={1: "gemini takes", 5: "bedrock takes", 6: "300,004 characters", 7: "gemini takes"},
        custom_ids={1: "mn1", 5: "mn5", 6: "mn6"},
    ),
    # on_invalid=reject: one bad line refuses the whole file, every valid line says why
    Case(
        "reject-one-bad-line",
        join(oa("rj1"), b"[1]", oa("rj2"), b"", an("rj3")),
        {1: E.FILE_REJECTED, 2: E.NOT_AN_OBJECT, 3: E.FILE_REJECTED, 5: E.FILE_REJECTED},
        "rejected",
        policy="reject",
        messages={1: "on_invalid policy is reject"},
        custom_ids={1: "rj1", 2: None, 3: "rj2", 5: "rj3"},
        reason="reject",
        check=check_reject_sent_nothing,
    ),
    Case(
        "reject-bad-encoding",
        join(oa("rb1"), oa("rb2", text="naïve").decode().encode("latin-1")),
        {1: E.FILE_REJECTED, 2: E.INVALID_ENCODING},
        "rejected",
        policy="reject",
        reason="reject",
    ),
    Case("reject-all-valid", join(oa("ra1"), b"  ", oa("ra2")), {1: OK, 3: OK}, "completed", policy="reject"),
]
