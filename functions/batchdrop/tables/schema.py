"""The columns a table job adds to every input row in its results table, defined once.

The completion function writes them (tables/join.py), the stack's Glue table declares them
(infra/constructs/analytics.py), and a test checks that the two agree. Types are Athena/Glue type
names; tables/join.py maps them onto Arrow types. One column depends on the job and is not here:
`parsed`, a struct built from the manifest's `response_format` schema (Athena reads a job's struct
through a table of its own, docs/athena.md).
"""

from __future__ import annotations

from typing import Final

# (name, Glue type, what it holds), in the order they follow the input's columns.
RESULT_COLUMNS: Final[tuple[tuple[str, str, str], ...]] = (
    ("custom_id", "string", "the request's id: the id_column's value, else row-<n>"),
    ("row_number", "bigint", "1-based number of the row in the input table (across its objects)"),
    ("response_text", "string", "the generated text (null for an embedding or a failed row)"),
    ("embedding", "array<float>", "the vector, for an embedding model (else null)"),
    ("status", "string", "succeeded, failed (the provider's answer) or invalid (never sent)"),
    ("error_code", "string", "errors.jsonl's code (null when succeeded)"),
    ("error_message", "string", "errors.jsonl's message (null when succeeded)"),
    ("input_tokens", "bigint", "tokens the provider counted in"),
    ("output_tokens", "bigint", "tokens the provider counted out"),
    ("cost_usd", "double", "what the row cost at its lane's price (null when the model's price is unknown)"),
    ("provider", "string", "the provider that answered (or would have)"),
    ("model", "string", "the model that answered"),
    ("lane", "string", "batch or realtime (null when never sent)"),
)
RESULT_COLUMN_NAMES: Final[tuple[str, ...]] = tuple(name for name, _, _ in RESULT_COLUMNS)
# The job-dependent struct of the fields parsed from a response_format schema's answer.
PARSED_COLUMN: Final = "parsed"

# The Glue table over every job's results.parquet: one partition per job, projected from the job's
# output path (docs/athena.md), so no crawler runs and a new job is queryable at once.
GLUE_TABLE: Final = "results"
PARTITION_COLUMN: Final = "job_path"
TABLE_FOLDER: Final = "table"  # outputs/<path>/<job_id>/table/results.parquet
