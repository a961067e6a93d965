"""Reading a table job's data (tables/sources.py): CSV and TSV as the csv module reads them, JSONL
records, Parquet a row group at a time with only the columns asked for; what cannot be read says
which object and where."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchdrop.tables import sources
from batchdrop.tables.sources import (
    BadRow,
    CsvRows,
    JsonRows,
    LocalObjects,
    ParquetRows,
    Rows,
    TableError,
    format_of,
    open_rows,
)


@pytest.fixture
def folder(tmp_path: Path) -> LocalObjects:
    return LocalObjects(str(tmp_path))


def put(folder: LocalObjects, key: str, data: bytes) -> None:
    path = Path(folder.root, *key.split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def opened(folder: LocalObjects, key: str, fmt: str | None = None, delimiter: str | None = None) -> Rows:
    obj = folder.head(key)
    assert obj is not None, key
    return open_rows(folder, obj, format_of(key, fmt), delimiter)


def all_rows(rows: Rows, wanted: list[str] | None = None) -> list[dict[str, Any]]:
    return [row for block in rows.blocks(wanted) for row in block]


def read(folder: LocalObjects, key: str, data: bytes, **kwargs: Any) -> tuple[list[str], list[dict[str, Any]]]:
    put(folder, key, data)
    rows = opened(folder, key, **kwargs)
    return rows.columns, all_rows(rows)


# -- CSV and TSV ------------------------------------------------------------------------------------


def test_csv_quoted_commas_quotes_and_newlines_stay_in_their_field(folder: LocalObjects) -> None:
    data = b'id,text\n1,"a, b, c"\n2,"first line\nsecond line"\n3,"say ""hi"""\n'
    columns, rows = read(folder, "data/t.csv", data)
    assert columns == ["id", "text"]
    assert rows == [
        {"id": "1", "text": "a, b, c"},
        {"id": "2", "text": "first line\nsecond line"},
        {"id": "3", "text": 'say "hi"'},
    ]


def test_csv_with_crlf_and_a_bom(folder: LocalObjects) -> None:
    data = b'\xef\xbb\xbfid,text\r\n1,one\r\n2,"two\r\nlines"\r\n'
    columns, rows = read(folder, "data/t.csv", data)
    assert columns == ["id", "text"]  # not "\ufeffid"
    assert rows == [{"id": "1", "text": "one"}, {"id": "2", "text": "two\r\nlines"}]


def test_csv_with_bare_cr_line_ends(folder: LocalObjects) -> None:
    _, rows = read(folder, "data/t.csv", b"id,text\r1,a\r2,b\r")
    assert rows == [{"id": "1", "text": "a"}, {"id": "2", "text": "b"}]


def test_unicode_line_separators_inside_a_csv_cell_do_not_end_the_row(folder: LocalObjects) -> None:
    # U+2028, U+2029, NEL, form feed, vertical tab: text pasted from the web or a PDF holds them; the csv
    # module does not end a row at them, and neither may the reader feeding it lines
    odd = "\u2028 \u2029 \x85 \x0c \x0b \x1c \x1d \x1e"
    data = f'id,text\n1,a{odd}b\n2,"quoted{odd}"\n3,last\n'.encode()
    _, rows = read(folder, "data/t.csv", data)
    assert rows == [
        {"id": "1", "text": f"a{odd}b"},
        {"id": "2", "text": f"quoted{odd}"},
        {"id": "3", "text": "last"},
    ]


def test_gzipped_csv_is_inflated(folder: LocalObjects) -> None:
    columns, rows = read(folder, "data/t.csv.gz", gzip.compress(b'id,text\n1,"x,y"\n2,z\n'))
    assert columns == ["id", "text"]
    assert rows == [{"id": "1", "text": "x,y"}, {"id": "2", "text": "z"}]


def test_tsv_splits_on_tabs_only(folder: LocalObjects) -> None:
    _, rows = read(folder, "data/t.tsv", b"id\ttext\n1\ta, b\n")
    assert rows == [{"id": "1", "text": "a, b"}]


def test_a_delimiter_override(folder: LocalObjects) -> None:
    _, rows = read(folder, "data/t.csv", b"id;text\n1;a, b\n", delimiter=";")
    assert rows == [{"id": "1", "text": "a, b"}]


def test_header_names_are_stripped(folder: LocalObjects) -> None:
    columns, rows = read(folder, "data/t.csv", b" id , text \n1,a\n")
    assert columns == ["id", "text"]
    assert rows == [{"id": "1", "text": "a"}]


def test_a_blank_line_is_no_row(folder: LocalObjects) -> None:
    _, rows = read(folder, "data/t.csv", b"id,text\n1,a\n\n2,b\n\n")
    assert rows == [{"id": "1", "text": "a"}, {"id": "2", "text": "b"}]


def test_a_line_of_the_wrong_width_is_a_bad_row_with_its_line_number(folder: LocalObjects) -> None:
    # Line numbers are the file's: the header is line 1, row 2 spans lines 3-4, line 5 is blank
    data = b'id,text\n1,a\n2,"two\nlines"\n\n3,b,extra\n4\n5,c\n'
    _, rows = read(folder, "data/t.csv", data)
    assert [type(r) for r in rows] == [dict, dict, BadRow, BadRow, dict]
    assert rows[0] == {"id": "1", "text": "a"}
    assert rows[4] == {"id": "5", "text": "c"}
    wide, narrow = rows[2], rows[3]
    assert isinstance(wide, BadRow)
    assert isinstance(narrow, BadRow)
    assert dict(wide) == {}  # no cells: nothing half-read reaches a template
    assert "data/t.csv, line 6: 3 fields where the header has 2" in wide.message
    assert "data/t.csv, line 7: 1 fields where the header has 2" in narrow.message


def test_the_columns_asked_for_only(folder: LocalObjects) -> None:
    put(folder, "data/t.csv", b"id,text,extra\n1,a,x\n")
    rows = opened(folder, "data/t.csv")
    assert all_rows(rows, ["text"]) == [{"text": "a"}]


@pytest.mark.parametrize(
    ("header", "says"),
    [
        (b"id,text,id\n1,a,b\n", "'id' appears twice"),
        (b"id, id\n1,2\n", "'id' appears twice"),
        (b"id,,text\n1,2,3\n", "column 2 has no name"),
        (b"id, ,text\n1,2,3\n", "column 2 has no name"),
        (b"", "is empty"),
    ],
)
def test_a_bad_header_is_a_table_error(folder: LocalObjects, header: bytes, says: str) -> None:
    put(folder, "data/t.csv", header)
    with pytest.raises(TableError) as caught:
        opened(folder, "data/t.csv")
    assert "data/t.csv" in str(caught.value)
    assert says in str(caught.value)


def test_non_utf8_bytes_are_a_table_error_naming_the_object(folder: LocalObjects) -> None:
    put(folder, "data/latin1.csv", "id,text\n1,café\n".encode("latin-1"))
    with pytest.raises(TableError) as caught:
        all_rows(opened(folder, "data/latin1.csv"))
    assert "data/latin1.csv" in str(caught.value)
    assert "UTF-8" in str(caught.value)


def test_an_unterminated_quote_is_a_table_error_with_its_line(folder: LocalObjects) -> None:
    put(folder, "data/t.csv", b'id,text\n1,a\n2,"never closed\n')
    with pytest.raises(TableError, match=r"data/t\.csv, line \d"):
        all_rows(opened(folder, "data/t.csv"))


def test_csv_blocks_hold_at_most_block_rows(folder: LocalObjects, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "BLOCK_ROWS", 3)
    put(folder, "data/t.csv", b"n\n" + b"".join(b"%d\n" % i for i in range(8)))
    blocks = list(opened(folder, "data/t.csv").blocks())
    assert [len(b) for b in blocks] == [3, 3, 2]
    assert [r["n"] for b in blocks for r in b] == [str(i) for i in range(8)]


def test_csv_batches_are_strings_and_a_bad_row_is_a_row_of_nulls(folder: LocalObjects) -> None:
    put(folder, "data/t.csv", b"id,text\n1,a\n2,b,c\n3,d\n")
    rows = opened(folder, "data/t.csv")
    table = pa.Table.from_batches(list(rows.batches()))
    assert table.schema == pa.schema([("id", pa.string()), ("text", pa.string())])
    assert table.to_pylist() == [{"id": "1", "text": "a"}, {"id": None, "text": None}, {"id": "3", "text": "d"}]


# -- JSONL records ----------------------------------------------------------------------------------


def test_jsonl_records_a_missing_key_is_absent(folder: LocalObjects) -> None:
    data = b'{"id": 1, "text": "a", "tags": ["x"]}\n\n{"id": 2}\r\n{"id": 3, "text": null, "more": true}\n'
    columns, rows = read(folder, "data/t.jsonl", data)
    assert columns == ["id", "text", "tags"]  # the first record's
    assert rows == [
        {"id": 1, "text": "a", "tags": ["x"]},
        {"id": 2},
        {"id": 3, "text": None, "more": True},
    ]


def test_jsonl_records_the_keys_asked_for(folder: LocalObjects) -> None:
    put(folder, "data/t.jsonl", b'{"id": 1, "text": "a", "x": 0}\n{"id": 2}\n')
    assert all_rows(opened(folder, "data/t.jsonl"), ["id", "text"]) == [{"id": 1, "text": "a"}, {"id": 2}]


def test_jsonl_strings_may_hold_unicode_line_separators(folder: LocalObjects) -> None:
    # JSON allows U+2028 and U+2029 raw inside a string (orjson writes them so)
    _, rows = read(folder, "data/t.jsonl", '{"text": "a\u2028b\u2029c\x85d"}\n{"text": "e"}\n'.encode())
    assert rows == [{"text": "a\u2028b\u2029c\x85d"}, {"text": "e"}]


def test_a_gzipped_jsonl_with_a_bom(folder: LocalObjects) -> None:
    _, rows = read(folder, "data/t.jsonl.gz", gzip.compress(b'\xef\xbb\xbf{"id": 1}\n'))
    assert rows == [{"id": 1}]


@pytest.mark.parametrize(
    ("data", "line", "says"),
    [
        (b'{"id": 1}\n\n[1, 2]\n', 3, "must be a JSON object"),
        (b'{"id": 1}\n"text"\n', 2, "must be a JSON object"),
        (b'{"id": 1}\n{"id": 2}\n{broken\n', 3, "not JSON"),
    ],
)
def test_a_jsonl_line_that_is_not_a_record_is_a_table_error_with_its_line(
    folder: LocalObjects, data: bytes, line: int, says: str
) -> None:
    put(folder, "data/t.jsonl", data)
    with pytest.raises(TableError) as caught:
        all_rows(opened(folder, "data/t.jsonl"))
    assert f"data/t.jsonl, line {line}:" in str(caught.value)
    assert says in str(caught.value)


def test_an_empty_jsonl_has_no_columns_and_no_rows(folder: LocalObjects) -> None:
    columns, rows = read(folder, "data/t.jsonl", b"\n\n")
    assert columns == []
    assert rows == []


# -- Parquet ----------------------------------------------------------------------------------------


def parquet_bytes(rows: int, group: int) -> bytes:
    table = pa.table(
        {
            "id": pa.array(range(rows), type=pa.int64()),
            "text": pa.array([f"text {i}" for i in range(rows)]),
            "score": pa.array([i / 2 for i in range(rows)]),
            "blob": pa.array(["x" * 50 for _ in range(rows)]),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=group)
    return sink.getvalue().to_pybytes()


def test_parquet_is_read_a_row_group_at_a_time_with_only_the_wanted_columns(folder: LocalObjects) -> None:
    put(folder, "data/t.parquet", parquet_bytes(250, 100))
    rows = opened(folder, "data/t.parquet")
    assert isinstance(rows, ParquetRows)
    assert rows.columns == ["id", "text", "score", "blob"]
    assert rows.rows == 250
    blocks = list(rows.blocks(["text", "id"]))
    # One block per row group (each under PARQUET_BATCH_ROWS)
    assert [len(b) for b in blocks] == [100, 100, 50]
    flat = [r for b in blocks for r in b]
    # The other columns are not read into the rows at all
    assert all(set(r) == {"text", "id"} for r in flat)
    assert [r["id"] for r in flat] == list(range(250))
    assert flat[123] == {"id": 123, "text": "text 123"}


def test_parquet_blocks_are_capped_within_a_row_group(folder: LocalObjects, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "PARQUET_BATCH_ROWS", 40)
    put(folder, "data/t.parquet", parquet_bytes(150, 100))
    blocks = list(opened(folder, "data/t.parquet").blocks(["id"]))
    assert [len(b) for b in blocks] == [40, 40, 20, 40, 10]
    assert [r["id"] for b in blocks for r in b] == list(range(150))


def test_parquet_batches_have_every_column_in_their_types(folder: LocalObjects) -> None:
    put(folder, "data/t.parquet", parquet_bytes(250, 100))
    batches = list(opened(folder, "data/t.parquet").batches())
    assert [b.num_rows for b in batches] == [100, 100, 50]
    table = pa.Table.from_batches(batches)
    assert table.schema.names == ["id", "text", "score", "blob"]
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("score").type == pa.float64()
    assert table.column("score").to_pylist()[-1] == 249 / 2


def test_a_file_that_is_not_parquet_is_a_table_error(folder: LocalObjects) -> None:
    put(folder, "data/t.parquet", b"id,text\n1,a\n")
    with pytest.raises(TableError, match=r"data/t\.parquet is not a readable Parquet file"):
        opened(folder, "data/t.parquet")


# -- formats ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "fmt"),
    [
        ("data/t.csv", "csv"),
        ("data/T.CSV", "csv"),
        ("data/t.csv.gz", "csv"),
        ("data/t.tsv", "tsv"),
        ("data/t.tab", "tsv"),
        ("data/t.parquet", "parquet"),
        ("data/part-0001.pq", "parquet"),
        ("data/t.jsonl", "jsonl"),
        ("data/t.jsonl.gz", "jsonl"),
    ],
)
def test_format_of_by_suffix(key: str, fmt: str) -> None:
    assert format_of(key, None) == fmt


def test_format_given_wins_over_the_suffix() -> None:
    assert format_of("data/export.txt", "tsv") == "tsv"
    assert format_of("data/t.csv", "parquet") == "parquet"


def test_an_unknown_suffix_without_a_format_says_to_set_it() -> None:
    with pytest.raises(TableError) as caught:
        format_of("data/export.txt", None)
    assert "data/export.txt" in str(caught.value)
    assert '"format"' in str(caught.value)


def test_the_reader_is_chosen_by_format(folder: LocalObjects) -> None:
    put(folder, "data/t.txt", b"a\tb\n1\t2\n")
    assert isinstance(opened(folder, "data/t.txt", fmt="tsv"), CsvRows)
    assert all_rows(opened(folder, "data/t.txt", fmt="tsv")) == [{"a": "1", "b": "2"}]
    put(folder, "data/r.txt", b'{"a": 1}\n')
    assert isinstance(opened(folder, "data/r.txt", fmt="jsonl"), JsonRows)


def test_local_objects_lists_a_prefix_in_key_order(folder: LocalObjects) -> None:
    for key in ("data/parts/b.csv", "data/parts/a.csv", "data/parts/sub/c.csv", "data/other.csv"):
        put(folder, key, b"x\n1\n")
    assert [o.key for o in folder.list("data/parts/")] == [
        "data/parts/a.csv",
        "data/parts/b.csv",
        "data/parts/sub/c.csv",
    ]
    assert folder.head("data/parts/missing.csv") is None
    assert folder.read("data/other.csv") == b"x\n1\n"
