#!/usr/bin/env python3
"""Validates sockflow records (one JSON object per line) against the JSON Schema.

usage: validate_records.py SCHEMA RECORDS.jsonl
Exit 0 if every line is one JSON object that the schema accepts; else prints each
failure (line number, the error, the line) and exits 1.
"""
import json
import sys

import jsonschema


def main() -> int:
    schema_path, records_path = sys.argv[1], sys.argv[2]
    with open(schema_path, encoding="utf-8") as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    failures = 0
    with open(records_path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if raw.strip() == b"":
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                print(f"line {n}: not JSON: {e}: {raw[:200]!r}")
                failures += 1
                continue
            errors = sorted(validator.iter_errors(record), key=lambda e: list(e.path))
            if errors:
                failures += 1
                best = jsonschema.exceptions.best_match(errors)
                print(f"line {n}: {best.message} at {'/'.join(map(str, best.path))}: {raw[:300]!r}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
