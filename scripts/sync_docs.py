#!/usr/bin/env python3
"""Rewrite the tables that mirror code: settings (docs/configuration.md, config/settings.toml) and
error codes (docs/errors.md). Run after adding a setting or a code; the tests check they agree.

    .venv/bin/python scripts/sync_docs.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service_gateway.errors import CODES  # noqa: E402
from service_gateway.settings import SETTINGS  # noqa: E402


def default_text(setting) -> str:
    value = setting.default
    if isinstance(value, list):
        return ",".join(value) if value else '""'
    if isinstance(value, bool):
        return str(value).lower()
    return '""' if value == "" else str(value)


def replace_table(path: Path, header: str, row_prefix: str, rows: list[str]) -> None:
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    end = start + 2
    while end < len(lines) and lines[end].startswith(row_prefix):
        end += 1
    lines[start + 2:end] = rows
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    replace_table(ROOT / "docs" / "configuration.md", "| Variable |", "| `SG_",
                  [f"| `{s.env}` | `{s.name}` | `{default_text(s)}` | {s.doc} |" for s in SETTINGS])
    replace_table(ROOT / "docs" / "errors.md", "| Code |", "| ",
                  [f"| {code} | {'— (in a job' + chr(39) + 's result)' if status == 200 else status} | `{name}` | "
                   f"{meaning} |" for code, (status, name, meaning) in CODES.items()])
    toml = ["# Service Gateway settings (TOML). Every key is optional; the values shown are the defaults.",
            "# The environment overrides this file: SG_<KEY IN CAPITALS>, e.g. SG_BROKER_URL.",
            "# docs/configuration.md explains each setting.", ""]
    for s in SETTINGS:
        if s.name != "config":
            value = str(s.default).lower() if isinstance(s.default, bool) else json.dumps(s.default)
            toml += [f"# {s.doc}", f"# {s.name} = {value}", ""]
    (ROOT / "config" / "settings.toml").write_text("\n".join(toml).rstrip() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
