"""The docs that list things must list all of them."""
from __future__ import annotations

import re
from pathlib import Path

from service_gateway.errors import CODES

ROOT = Path(__file__).resolve().parent.parent


def test_errors_doc_lists_every_code():
    doc = (ROOT / "docs" / "errors.md").read_text()
    listed = {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d{3}) \|.*?\| `(\w+)` \|", doc, re.M)}
    assert listed == {code: name for code, (_, name, _) in CODES.items()}


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
