"""A table job's manifest (tables/manifest.py): decoded strictly, every refusal naming the field to fix."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from batchdrop.tables.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
    apply_template_file,
    is_manifest,
    parse,
)

WHERE = "inputs/team/tickets.job.json"
BASE: dict[str, Any] = {"data": "data/tickets.csv", "model": "gpt-4o-mini", "user": "Summarise: {{ text }}"}


def refused(manifest: dict[str, Any] | bytes) -> str:
    raw = manifest if isinstance(manifest, bytes) else orjson.dumps(manifest)
    with pytest.raises(ManifestError) as caught:
        parse(raw, WHERE)
    message = str(caught.value)
    assert message.startswith(WHERE), message  # every refusal says which manifest
    return message


def with_(**changes: Any) -> dict[str, Any]:
    out = {**BASE, **changes}
    return {k: v for k, v in out.items() if v is not None}


def without(*names: str) -> dict[str, Any]:
    return {k: v for k, v in BASE.items() if k not in names}


# -- a manifest that decodes ------------------------------------------------------------------------


def test_a_minimal_manifest_decodes_with_its_defaults() -> None:
    manifest = parse(orjson.dumps(BASE), WHERE)
    assert manifest.data == "data/tickets.csv"
    assert manifest.model == "gpt-4o-mini"
    assert manifest.user == "Summarise: {{ text }}"
    assert manifest.output_format == "parquet"
    assert manifest.columns_prefix == ""
    assert manifest.max_tokens is None


def test_data_may_be_a_prefix_or_a_list() -> None:
    assert parse(orjson.dumps(with_(data="data/parts/")), WHERE).data == "data/parts/"
    assert parse(orjson.dumps(with_(data=["data/a.csv", "data/b.csv"])), WHERE).data == ["data/a.csv", "data/b.csv"]


def test_is_manifest_by_suffix() -> None:
    assert is_manifest("inputs/x/tickets.job.json")
    assert not is_manifest("inputs/x/tickets.jsonl")
    assert not is_manifest("inputs/x/tickets.json")


# -- refusals that name the field -------------------------------------------------------------------


def test_an_unknown_field_is_refused_by_name_and_the_known_fields_are_listed() -> None:
    message = refused(with_(maxtokens=10))
    assert "`maxtokens`" in message
    assert "max_tokens" in message  # the fields a manifest may hold, so the typo is plain
    assert "columns_prefix" in message


def test_a_missing_model_is_refused_by_name() -> None:
    assert "`model`" in refused(without("model"))


def test_an_empty_model_is_refused() -> None:
    assert '"model"' in refused(with_(model="  "))


def test_a_value_of_the_wrong_type_names_its_path() -> None:
    message = refused(with_(max_tokens="10"))
    assert "$.max_tokens" in message
    assert "str" in message


def test_a_nonpositive_max_tokens_is_refused() -> None:
    assert '"max_tokens"' in refused(with_(max_tokens=0))


def test_a_bad_enum_value_names_its_path() -> None:
    assert "$.output_format" in refused(with_(output_format="xlsx"))
    assert "$.messages[0].role" in refused(with_(user=None, messages=[{"role": "tool", "content": "x"}]))


@pytest.mark.parametrize(
    "data",
    [
        "inputs/tickets.csv",
        "outputs/old/results.csv",
        "work/",
        "tickets.csv",
        "data/",
        ["data/ok.csv", "inputs/more.csv"],
    ],
)
def test_data_outside_the_data_prefix_is_refused_with_where_to_put_it(data: Any) -> None:
    # Only data/ is granted to the functions that read tables (least privilege), and never a prefix
    # batchdrop reads or writes itself.
    message = refused(with_(data=data))
    assert '"data"' in message
    assert "is not under data/" in message
    assert "put a table job's data under data/" in message


def test_a_template_outside_the_templates_prefix_is_refused() -> None:
    message = refused(with_(user=None, template="prompts/ask.txt"))
    assert '"template"' in message
    assert "is not under templates/" in message


@pytest.mark.parametrize("data", ["", "   ", []])
def test_empty_data_is_refused(data: Any) -> None:
    assert '"data"' in refused(with_(data=data))


def test_a_delimiter_of_more_than_one_character_is_refused() -> None:
    assert '"delimiter"' in refused(with_(delimiter=";;"))


def test_no_prompt_is_refused() -> None:
    message = refused(without("user"))
    assert "no prompt" in message
    assert '"user"' in message


def test_system_without_user_is_refused() -> None:
    message = refused(with_(user=None, system="You are terse."))
    assert '"system"' in message
    assert '"user"' in message


def test_a_template_and_an_inline_prompt_at_once_are_refused() -> None:
    message = refused(with_(template="templates/ticket.json"))
    assert '"template"' in message
    assert "not both" in message


@pytest.mark.parametrize(
    ("changes", "kinds"),
    [
        ({"messages": [{"role": "user", "content": "{{ text }}"}]}, ("system/user", "messages")),
        ({"input": "{{ text }}"}, ("system/user", "input")),
        ({"user": None, "messages": [{"role": "user", "content": "x"}], "input": "x"}, ("messages", "input")),
    ],
)
def test_two_prompt_kinds_at_once_are_refused(changes: dict[str, Any], kinds: tuple[str, str]) -> None:
    message = refused(with_(**changes))
    assert all(kind in message for kind in kinds), message
    assert "only one" in message


def test_messages_without_a_user_message_are_refused() -> None:
    message = refused(with_(user=None, messages=[{"role": "system", "content": "x"}]))
    assert '"messages"' in message
    assert "user" in message


def test_response_format_with_an_embedding_input_is_refused() -> None:
    message = refused(
        with_(user=None, model="text-embedding-3-small", input="{{ text }}", response_format={"type": "json_object"})
    )
    assert '"response_format"' in message
    assert '"input"' in message


@pytest.mark.parametrize("raw", [b"{not json", b'{"data": "d.csv",', b""])
def test_invalid_json_is_refused_as_such(raw: bytes) -> None:
    assert "is not valid JSON" in refused(raw)


def test_a_json_array_is_not_a_manifest() -> None:
    assert "object" in refused(b"[1, 2]")


def test_an_oversize_manifest_is_refused_before_it_is_decoded() -> None:
    # Valid JSON, padded past the limit: refused for its size, whatever it holds
    raw = orjson.dumps(BASE)[:-1] + b" " * MAX_MANIFEST_BYTES + b"}"
    message = refused(raw)
    assert f"{MAX_MANIFEST_BYTES:,}" in message
    # A manifest just under the limit is fine
    parse(orjson.dumps(BASE)[:-1] + b" " * (MAX_MANIFEST_BYTES - len(orjson.dumps(BASE))) + b"}", WHERE)


# -- the prompt from a template object --------------------------------------------------------------


def template_manifest(**changes: Any) -> Manifest:
    return parse(orjson.dumps(with_(user=None, template="templates/ticket.json", **changes)), WHERE)


def test_a_manifest_with_a_template_and_no_inline_prompt_decodes() -> None:
    manifest = template_manifest(max_tokens=50)
    assert manifest.template == "templates/ticket.json"
    assert manifest.user is None
    assert manifest.max_tokens == 50


def test_a_json_template_object_gives_its_prompt_fields() -> None:
    manifest = template_manifest(max_tokens=50)
    raw = orjson.dumps({"system": "You triage {{ product }} tickets.", "user": "{{ text }}"})
    merged = apply_template_file(manifest, raw, "templates/ticket.json", WHERE)
    assert merged.system == "You triage {{ product }} tickets."
    assert merged.user == "{{ text }}"
    assert merged.max_tokens == 50  # the manifest's settings stay
    assert merged.model == "gpt-4o-mini"


def test_a_json_template_object_may_hold_messages_or_input() -> None:
    manifest = template_manifest()
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "{{ text }}"}]
    merged = apply_template_file(manifest, orjson.dumps({"messages": messages}), "templates/t.json", WHERE)
    assert merged.messages is not None
    assert [(m.role, m.content) for m in merged.messages] == [("system", "s"), ("user", "{{ text }}")]
    embedding = template_manifest(model="text-embedding-3-small")
    merged = apply_template_file(embedding, b'{"input": "{{ text }}"}', "templates/e.json", WHERE)
    assert merged.input == "{{ text }}"


def test_a_plain_text_template_object_is_the_user_template() -> None:
    manifest = template_manifest()
    merged = apply_template_file(manifest, "Résumé: {{ text }}\n".encode(), "templates/ticket.j2", WHERE)
    assert merged.user == "Résumé: {{ text }}\n"
    assert merged.system is None


def test_a_json_template_object_is_checked_like_an_inline_prompt() -> None:
    manifest = template_manifest()
    with pytest.raises(ManifestError) as caught:
        apply_template_file(manifest, b'{"system": "x"}', "templates/t.json", WHERE)
    assert "templates/t.json" in str(caught.value)
    assert '"user"' in str(caught.value)
    with pytest.raises(ManifestError, match="no prompt"):
        apply_template_file(manifest, b"{}", "templates/t.json", WHERE)


def test_an_unknown_field_in_a_template_object_lists_what_a_template_object_may_hold() -> None:
    manifest = template_manifest()
    with pytest.raises(ManifestError) as caught:
        apply_template_file(manifest, b'{"sytem": "x", "user": "y"}', "templates/t.json", WHERE)
    message = str(caught.value)
    assert "`sytem`" in message
    assert "templates/t.json" in message
    # The fields a template object may hold, not the manifest's (a template holds no model or data)
    listed = message.split("may hold:", 1)[1]
    assert "system" in listed
    assert "user" in listed
    assert "model" not in listed
    assert "data" not in listed


def test_a_template_object_that_is_not_json_or_not_utf8_is_refused() -> None:
    manifest = template_manifest()
    with pytest.raises(ManifestError, match=r"templates/t\.json"):
        apply_template_file(manifest, b"{nope", "templates/t.json", WHERE)
    with pytest.raises(ManifestError, match="not UTF-8"):
        apply_template_file(manifest, b"\xff\xfe{{ x }}", "templates/t.txt", WHERE)


def test_response_format_with_an_embedding_template_object_is_refused() -> None:
    manifest = template_manifest(model="text-embedding-3-small", response_format={"type": "json_object"})
    with pytest.raises(ManifestError, match='"response_format"'):
        apply_template_file(manifest, b'{"input": "{{ text }}"}', "templates/e.json", WHERE)
