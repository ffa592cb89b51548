"""One self-contained HTML page from the report's Markdown: figures embedded as base64 data URIs."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from markdown_it import MarkdownIt

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; }
blockquote { background: #fff6db; border-left: 4px solid #e0b000; margin: 0.5em 0; padding: 0.3em 1em; }
code { background: #f3f3f3; padding: 0 0.2em; }
.verdict { display: inline-block; padding: 0 0.45em; border-radius: 0.3em; color: #fff; font-weight: 600;
           white-space: nowrap; }
.verdict.yes { background: #1a7f37; }
.verdict.no { background: #cf222e; }
.verdict.unchecked { background: #6e7781; }
.verdict.open { background: #9a6700; }
"""

# registry: verdict -> badge class (the verdicts are telly.reporting.verdicts's)
VERDICT_CLASS = {"reproduced": "yes", "not reproduced": "no", "inconclusive": "open", "not checked": "unchecked"}


def _badges(body: str) -> str:
    """The Markdown's verdict marks (document.MARK) as CSS badges: no glyph, so no font is needed."""
    from telly.reporting.document import MARK

    for verdict, mark in sorted(MARK.items(), key=lambda kv: -len(kv[1])):
        body = body.replace(mark, f'<span class="verdict {VERDICT_CLASS[verdict]}">{verdict}</span>')
    return body


def to_html(markdown: str, base_dir: Path, title: str = "Telly study report") -> str:
    """Render ``markdown``; every ``<img src="relative.png">`` under ``base_dir`` becomes a data URI."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)

    def inline(match: re.Match) -> str:
        path = base_dir / match.group(1)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = _badges(re.sub(r'src="([^":]+\.png)"', inline, body))
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )
