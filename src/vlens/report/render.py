"""Render sections to Markdown and to a self-contained-looking HTML page (figures are files beside it)."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

from vlens.report.section import Section, fmt
from vlens.tables import markdown_table

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d1d1f;line-height:1.5}
h1{font-size:1.8em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0;font-size:.92em} th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:right} th{background:#f3f3f5} td:first-child,th:first-child{text-align:left}
figure{margin:1.2em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{color:#555;font-size:.9em}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto} .err{color:#b00020} .meta{color:#666;font-size:.9em}
nav a{margin-right:1em} code{background:#f3f3f5;padding:0 .25em;border-radius:3px;font-size:.92em}
"""


_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<em>\1</em>"),
    (re.compile(r"(?<![\w])_(?!\s)(.+?)(?<!\s)_(?![\w])"), r"<em>\1</em>"),
    (re.compile(r"\[([^\]]+)\]\((https?://[^)\s]+|[\w./-]+)\)"), r"<a href='\2'>\1</a>"),
]


def inline_html(text: str) -> str:
    """Escape ``text`` and render the inline Markdown sections use: `code`, **bold**, *em*, _em_, [links](url)."""
    out = html.escape(text, quote=False)
    for pattern, repl in _INLINE:
        if pattern.pattern.startswith("`"):
            out = pattern.sub(repl, out)
            continue
        # never touch what is inside <code>
        parts = re.split(r"(<code>.*?</code>)", out)
        out = "".join(p if p.startswith("<code>") else pattern.sub(repl, p) for p in parts)
    return out


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path, base).replace(os.sep, "/")


def to_markdown(title: str, sections: list[Section], base: Path, meta: str = "") -> str:
    out = [f"# {title}", ""]
    if meta:
        out += [meta, ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            kind = b[0]
            if kind == "text":
                out += [b[1], ""]
            elif kind == "code":
                out += ["```", b[1], "```", ""]
            elif kind == "table":
                _, headers, rows, caption = b
                if caption:
                    out += [f"*{caption}*", ""]
                cells = [[fmt(c) for c in r] for r in rows]
                out += markdown_table(headers, cells, align="l" + "r" * (len(headers) - 1)).splitlines()
                out.append("")
            elif kind == "figure":
                _, path, caption = b
                out += [f"![{caption}]({_rel(path, base)})", "", f"*{caption}*", ""]
    return "\n".join(out)


def to_html(title: str, sections: list[Section], base: Path, meta: str = "") -> str:
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{_CSS}</style></head><body>",
             f"<h1>{e(title)}</h1>"]
    if meta:
        parts.append(f"<p class='meta'>{e(meta)}</p>")
    parts.append("<nav>" + "".join(f"<a href='#s{i}'>{e(s.title)}</a>" for i, s in enumerate(sections)) + "</nav>")
    for i, s in enumerate(sections):
        parts.append(f"<h2 id='s{i}'>{e(s.title)}</h2>")
        for b in s.blocks:
            kind = b[0]
            if kind == "text":
                for para in b[1].split("\n\n"):
                    cls = " class='err'" if para.startswith("**Failed") else ""
                    parts.append(f"<p{cls}>{inline_html(para)}</p>")
            elif kind == "code":
                parts.append(f"<pre>{e(b[1])}</pre>")
            elif kind == "table":
                _, headers, rows, caption = b
                cap = f"<caption>{inline_html(caption)}</caption>" if caption else ""
                head = "".join(f"<th>{e(str(h))}</th>" for h in headers)
                body = "".join("<tr>" + "".join(f"<td>{inline_html(fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
                parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif kind == "figure":
                _, path, caption = b
                parts.append(f"<figure><img src='{e(_rel(path, base))}' alt='{e(caption)}' loading='lazy'>"
                             f"<figcaption>{inline_html(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
