"""A document model rendered to both Markdown and HTML (images inlined), each file written atomically."""

from __future__ import annotations

import base64
import html
from pathlib import Path


class Document:
    def __init__(self) -> None:
        self.blocks: list[tuple[str, object]] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("bullets", items))

    def table(self, header: list[str], rows: list[list[str]], caption: str = "") -> None:
        self.blocks.append(("table", (header, rows, caption)))

    def image(self, path: Path, caption: str) -> None:
        self.blocks.append(("image", (path, caption)))

    def markdown(self, docs: Path) -> str:
        out = []
        for kind, body in self.blocks:
            if kind == "heading":
                level, text = body
                out.append(f"{'#' * level} {text}\n")
            elif kind == "text":
                out.append(f"{body}\n")
            elif kind == "bullets":
                out.append("\n".join(f"- {item}" for item in body) + "\n")
            elif kind == "table":
                header, rows, caption = body
                if caption:
                    out.append(f"*{caption}*\n")
                out.append("| " + " | ".join(header) + " |\n|" + "|".join("---" for _ in header) + "|\n"
                           + "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n")
            elif kind == "image":
                path, caption = body
                out.append(f"![{caption}]({path.relative_to(docs).as_posix()})\n\n*{caption}*\n")
        return "\n".join(out)

    def write(self, docs: Path, stem: str, title: str) -> None:
        """``docs/STEM.md`` and ``docs/STEM.html``, each written atomically."""
        from xdiffusion.io import atomic_output

        with atomic_output(docs / f"{stem}.md") as temporary:
            temporary.write_text(self.markdown(docs), encoding="utf-8")
        with atomic_output(docs / f"{stem}.html") as temporary:
            temporary.write_text(self.html(title), encoding="utf-8")
        print(f"wrote {docs / f'{stem}.md'} and {docs / f'{stem}.html'}")

    def html(self, title: str) -> str:
        def inline(text: str) -> str:
            escaped = html.escape(text)
            parts = escaped.split("`")
            coded = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
            return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(coded.split("**")))

        out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
               "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}td,th{border:1px solid #bbb;padding:3px 7px;"
               "text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}img{max-width:100%;"
               "border:1px solid #ddd}figcaption,.caption{font-style:italic;color:#555;font-size:13px}code{background:#f3f3f3}"
               "</style></head><body>"]
        for kind, body in self.blocks:
            if kind == "heading":
                level, text = body
                out.append(f"<h{level}>{inline(text)}</h{level}>")
            elif kind == "text":
                out.append(f"<p>{inline(body)}</p>")
            elif kind == "bullets":
                out.append("<ul>" + "".join(f"<li>{inline(item)}</li>" for item in body) + "</ul>")
            elif kind == "table":
                header, rows, caption = body
                if caption:
                    out.append(f"<p class='caption'>{inline(caption)}</p>")
                out.append("<table><tr>" + "".join(f"<th>{inline(h)}</th>" for h in header) + "</tr>"
                           + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in rows) + "</table>")
            elif kind == "image":
                path, caption = body
                data = base64.b64encode(Path(path).read_bytes()).decode()
                out.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
                           f"<figcaption>{inline(caption)}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out)
