"""mkdocs-gen-files script: writes the API reference pages (``reference/``) at build time."""

from __future__ import annotations

import sys
from pathlib import Path

import mkdocs_gen_files

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
from doors import load_package, reference_pages  # noqa: E402

for path, text in reference_pages(load_package(str(TOOLS.parents[1]))).items():
    with mkdocs_gen_files.open(path, "w") as page:
        page.write(text)
