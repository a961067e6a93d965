"""Table jobs (docs/contract.md, "Table jobs"): a manifest names a CSV, TSV, Parquet or JSONL-of-records
table and a prompt template; each row renders to a neutral request line that the JSONL pipeline runs,
and the answers are joined back to the rows in the table the job writes.

pyarrow is imported only where a Parquet table is read or written, so a JSONL job never loads it.
"""
