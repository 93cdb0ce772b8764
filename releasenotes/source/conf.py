"""Sphinx configuration of the ironic-snapshot release notes.

Build with ``sphinx-build -W -b html releasenotes/source releasenotes/build/html``
from the repository root; ``reno.sphinxext`` reads the notes from git.
"""

project = "ironic-snapshot Release Notes"
copyright = "ironic-snapshot contributors"  # noqa: A001 (Sphinx's name)
author = "ironic-snapshot contributors"

extensions = ["reno.sphinxext"]

root_doc = "index"
source_suffix = {".rst": "restructuredtext"}
exclude_patterns: list[str] = []
# The notes change with every commit; no version is pinned here.
version = ""
release = ""

html_theme = "alabaster"
html_static_path: list[str] = []
