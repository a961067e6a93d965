"""Prompt templates are user data: they run in Jinja2's sandbox, see only the row, and a value they
name that the row lacks is an error on that row, never an empty string.

- `SandboxedEnvironment` refuses attribute access that could reach out of the template (`__class__`,
  `__globals__`, a function's internals...) with a SecurityError; no loader is configured, and a
  template that uses `include`, `import` or `extends` is refused when it is compiled (a job-level
  TemplateError), not left to fail on every row.
- `StrictUndefined`: printing, iterating or testing a missing value raises UndefinedError, which
  becomes the row's `template_error` with the column named. A null cell (an empty Parquet or JSON
  value) is missing too; `{{ x | default("") }}` says what to use instead.
- No HTML autoescaping: the output is a prompt, not a page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

# Tags that would read another template: refused (there is nothing for them to read).
_LOADING = {
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
    nodes.Extends: "extends",
}
# Names a template may use besides the columns.
ROW = "row"  # the whole row, for a column whose name is not an identifier: {{ row["unit price"] }}
ROW_NUMBER = "row_number"
BUILTINS = frozenset({ROW, ROW_NUMBER, "range", "dict", "lipsum", "cycler", "joiner", "namespace"})


class TemplateError(Exception):
    """A template that cannot run at all: it does not parse, or it reached outside the row."""


class RowError(Exception):
    """A row that does not render; `column` when a missing value is to blame."""

    def __init__(self, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column


def environment() -> SandboxedEnvironment:
    # keep_trailing_newline: a prompt is the text as written; undefined values raise at use.
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


@dataclass
class Template:
    field: str  # where it came from in the manifest: "user", "messages[1].content", ...
    source: str
    names: frozenset[str]  # the variables it reads (columns, or the builtins above)
    _compiled: Any

    def render(self, row: Mapping[str, Any], number: int) -> str:
        try:
            return str(self._compiled.render({**row, ROW: row, ROW_NUMBER: number}))
        except SecurityError as exc:
            raise TemplateError(
                f"template {self.field!r} tried to reach outside the row ({exc}); templates see only the row's values"
            ) from None
        except UndefinedError as exc:
            column = _missing(str(exc))
            if column is not None:
                raise RowError(f"template {self.field!r}: column {column!r} has no value in this row", column) from None
            raise RowError(f"template {self.field!r}: {exc}") from None
        except Exception as exc:  # a filter given the wrong type, a division by zero: this row's, not the job's
            raise RowError(f"template {self.field!r}: {type(exc).__name__}: {exc}") from None


def compile_template(env: SandboxedEnvironment, field: str, source: str) -> Template:
    try:
        parsed = env.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template {field!r} does not parse: line {exc.lineno}: {exc.message}") from None
    for tag in parsed.find_all(tuple(_LOADING)):
        raise TemplateError(
            f"template {field!r} line {tag.lineno}: {{% {_LOADING[type(tag)]} %}} would read another template; "
            "a template sees only the row: write the text in it"
        )
    names = frozenset(meta.find_undeclared_variables(parsed))
    # Subscripts of `row` with a constant name are columns too: {{ row["unit price"] }}.
    for node in parsed.find_all(nodes.Getitem):
        if isinstance(node.node, nodes.Name) and node.node.name == ROW and isinstance(node.arg, nodes.Const):
            names |= {str(node.arg.value)}
    return Template(field, source, names, env.from_string(parsed))


def columns_used(templates: list[Template]) -> set[str]:
    return {n for t in templates for n in t.names} - BUILTINS


def _missing(message: str) -> str | None:
    # StrictUndefined's messages: "'title' is undefined", "'dict object' has no attribute 'x'",
    # "'dict object' has no element 'unit price'".
    if message.endswith(" is undefined") and message.startswith("'"):
        return message[1 : message.index("'", 1)]
    for marker in (" has no attribute '", " has no element '"):
        if marker in message:
            rest = message.split(marker, 1)[1]
            return rest[: rest.rfind("'")]
    return None
