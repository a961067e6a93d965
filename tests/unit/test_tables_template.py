"""Table job templates (tables/template.py): sandboxed, strict about missing values, and the names they
read found before any row is rendered."""

from __future__ import annotations

import pytest

from batchdrop.tables.template import (
    RowError,
    Template,
    TemplateError,
    columns_used,
    compile_template,
    environment,
)


def compile_(source: str, field: str = "user") -> Template:
    return compile_template(environment(), field, source)


# -- missing values are the row's error, never an empty string ------------------------------------


def test_a_column_missing_from_the_row_is_a_row_error_naming_it() -> None:
    # Given a template reading two columns
    template = compile_("Title: {{ title }}\nBody: {{ body }}")
    # When a row lacks one of them
    with pytest.raises(RowError) as caught:
        template.render({"title": "Hi"}, 1)
    # Then the error names that column and the template it came from
    assert caught.value.column == "body"
    assert "'body'" in str(caught.value)
    assert "'user'" in str(caught.value)


def test_a_null_cell_is_missing_unless_the_template_gives_a_default() -> None:
    # A null cell reaches the template as an absent value (job.line drops None values): strict...
    strict = compile_("[{{ note }}]")
    with pytest.raises(RowError) as caught:
        strict.render({}, 3)
    assert caught.value.column == "note"
    # ...and `default` says what to use instead
    lenient = compile_('[{{ note | default("") }}]')
    assert lenient.render({}, 3) == "[]"
    assert lenient.render({"note": "n"}, 3) == "[n]"


def test_testing_or_iterating_a_missing_value_is_a_row_error_too() -> None:
    with pytest.raises(RowError):
        compile_("{% for t in tags %}{{ t }}{% endfor %}").render({}, 1)
    with pytest.raises(RowError):
        compile_("{% if flag %}yes{% endif %}").render({}, 1)
    # `is defined` is the way to ask
    assert compile_("{% if flag is defined %}yes{% else %}no{% endif %}").render({}, 1) == "no"


def test_a_subscript_of_row_that_the_row_lacks_names_the_column() -> None:
    template = compile_('{{ row["unit price"] }}')
    with pytest.raises(RowError) as caught:
        template.render({"other": 1}, 1)
    assert caught.value.column == "unit price"


def test_a_runtime_error_in_a_filter_is_the_rows_not_the_jobs() -> None:
    # A division by zero on one row's value must not stop the job
    template = compile_("{{ (total / count) | round(2) }}")
    assert template.render({"total": 10, "count": 4}, 1) == "2.5"
    with pytest.raises(RowError) as caught:
        template.render({"total": 10, "count": 0}, 2)
    assert "ZeroDivisionError" in str(caught.value)


# -- a template that cannot run at all --------------------------------------------------------------


def test_a_syntax_error_is_a_template_error_with_its_line() -> None:
    with pytest.raises(TemplateError) as caught:
        compile_("Line one\nLine two {{ title }\nLine three", field="messages[1].content")
    message = str(caught.value)
    assert "line 2" in message
    assert "'messages[1].content'" in message
    assert "does not parse" in message


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ row.__class__ }}",
        "{{ title.__class__.__base__.__subclasses__() }}",
        "{{ lipsum.__globals__ }}",
    ],
)
def test_reaching_outside_the_row_is_a_job_level_template_error(source: str) -> None:
    # The sandbox refuses the attribute; it is the job's error (TemplateError), not the row's
    template = compile_(source)
    with pytest.raises(TemplateError) as caught:
        template.render({"title": "x"}, 1)
    assert "outside the row" in str(caught.value)
    assert not isinstance(caught.value, RowError)


@pytest.mark.parametrize(
    ("source", "tag"),
    [
        ('{% include "secrets.txt" %}', "include"),
        ('{% import "macros.j2" as m %}{{ m.x }}', "import"),
        ('{% from "macros.j2" import x %}{{ x }}', "import"),
        ('{% extends "base.j2" %}', "extends"),
        ('Hello\n{% if title %}{% include "/etc/passwd" %}{% endif %}', "include"),
    ],
)
def test_include_import_and_extends_are_refused_when_the_template_compiles(source: str, tag: str) -> None:
    # Not a TypeError on every row at render time: the job is refused before any row is read
    with pytest.raises(TemplateError) as caught:
        compile_(source)
    assert tag in str(caught.value)
    assert "'user'" in str(caught.value)


def test_include_is_refused_with_its_line() -> None:
    with pytest.raises(TemplateError, match="line 3"):
        compile_('one\ntwo\n{% include "x" %}')


# -- names: the columns a template reads ------------------------------------------------------------


def test_row_subscript_and_row_number_render() -> None:
    template = compile_('#{{ row_number }}: {{ row["col with space"] }} / {{ plain }}')
    assert template.render({"col with space": "spaced", "plain": "p"}, 42) == "#42: spaced / p"


def test_columns_used_has_plain_names_and_row_subscripts_and_no_builtins() -> None:
    templates = [
        compile_('{{ title }} {{ row["unit price"] }} {{ row_number }} {{ row["qty"] | default(0) }}'),
        compile_(
            "{% for x in range(2) %}{{ loop.index }}{% endfor %}{% set n = namespace(v=1) %}{{ n.v }}{{ body }}",
            field="system",
        ),
    ]
    assert columns_used(templates) == {"title", "unit price", "qty", "body"}


def test_names_set_inside_the_template_are_not_columns() -> None:
    template = compile_("{% set greeting = 'hi' %}{{ greeting }} {{ name }}{% for t in tags %}{{ t }}{% endfor %}")
    assert columns_used([template]) == {"name", "tags"}


def test_rendering_keeps_the_text_as_written() -> None:
    # No HTML escaping (a prompt is not a page), and a trailing newline is kept
    template = compile_("Q: {{ q }}\n")
    assert template.render({"q": "<b>a & b</b>"}, 1) == "Q: <b>a & b</b>\n"
