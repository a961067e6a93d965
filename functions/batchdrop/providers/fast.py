"""What the providers' fast-path schemas share (`FastPath` in batchdrop.providers.spec): the types of
their values, and the text content of a message.

Each shape's schema and loop live in its folder (`providers/<name>/fast.py`); batchdrop.validation
decodes the blocks and hands the lines to the loop. Imports no provider and no SDK.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from batchdrop.providers.lines import MAX_TOKENS

# The schemas of the fast path: only the fields we check, and the checks msgspec makes in C for free
# while it decodes (methods, endpoints, non-empty models). Every value a schema admits is typed and
# every object forbids fields it does not name: msgspec range-checks the numbers it decodes, but not
# those it skips, so a skipped `1e999` (which orjson, the providers and our own sending refuse) would
# pass. A line with any other field or shape (content blocks, tools, images) goes to the full check,
# which is slower but sees everything. A byte-level pre-check for such numbers was measured instead: a
# regex costs 10 to 50 times the whole validation of a 2 KB line, `bytes.translate` about as much as
# the validation itself. Typed, nothing can nest deeper than a few levels, so msgspec never recurses
# far. The id pattern is checked in Python: msgspec's `pattern` costs more than a compiled fullmatch.
# As nothing is skipped, msgspec also checks the UTF-8 of the whole line (it checks every string it
# decodes; keys and literals must match ASCII names): the lines need no UTF-8 check of their own, a
# pass over every byte (6% of the instructions on a 2 KB line, 2% on a 400-byte one, by cachegrind).
# A prompt is decoded into a str. Held as msgspec.Raw instead (not copied), with a check that it starts
# with a quote (a JSON string hides no number), it cost more than it saved: the str of a 2 KB prompt
# costs about 425 instructions, reading the first byte of a Raw (struct.unpack_from, memoryview) 600
# to 1,400 a message.
Model = Annotated[str, msgspec.Meta(min_length=1)]
Count = Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKENS)]
Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Strings = str | list[str]


class TextPart(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    type: Literal["text"]
    text: str


Content = str | list[TextPart]
