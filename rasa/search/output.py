"""What ``rasa search`` writes: JSON, a PNG grid per query, and one HTML page.

- ``results.json``: the search document (:func:`rasa.search.searcher.search`): per query its
  text, the cleaned text, whether it was truncated (and how), and its hits, best first, each
  with the image's ``name`` (relative to the gallery root), ``path``, ``score`` (the two-stage
  score: ``2 + p`` for the re-ranked top k, ``p`` the ITM match probability, else the cosine
  similarity), ``first_stage`` (the cosine similarity) and ``itm_probability``.
- ``query-NNN.png``: one row of the query's hits, titled with the query (matplotlib, Agg).
- ``--html DIR``: ``DIR/index.html``, one page for all queries: plain HTML with its style
  inline, the gallery images linked by paths relative to ``DIR`` (the page and the gallery
  can move together).

Every file is written atomically.
"""

from __future__ import annotations

import html
import os
import textwrap
from pathlib import Path
from typing import Any

from rasa.io import atomic_path, write_json, write_text

RESULTS = "results.json"


def png_name(i: int) -> str:
    return f"query-{i + 1:03d}.png"


def write_results(out_dir: str | Path, doc: dict[str, Any]) -> Path:
    dest = Path(out_dir) / RESULTS
    write_json(dest, doc)
    return dest


def plot_query(result: dict[str, Any], dest: str | Path, width: int = 90) -> Path:
    """One row of the query's hits (rank, score and name under each), titled with the query."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    hits = result["hits"]
    n = max(1, len(hits))
    fig, axes = plt.subplots(1, n, figsize=(1.25 * n + 0.4, 3.3), squeeze=False)
    title = "\n".join(textwrap.wrap(result["query"], width))
    if result.get("note"):
        title += f"\n({result['note']})"
    fig.suptitle(title, fontsize=9)
    for ax, hit in zip(axes[0], hits, strict=False):
        with Image.open(hit["path"]) as im:
            ax.imshow(im.convert("RGB"))
        ax.set_xticks([])
        ax.set_yticks([])
        label = f"{hit['rank']}  {hit['score']:.3f}"
        ax.set_title(label, fontsize=7, pad=2)
        name = Path(hit["name"]).name
        ax.set_xlabel(name if len(name) <= 20 else name[:9] + "…" + name[-9:], fontsize=5)
    for ax in axes[0][len(hits) :]:
        ax.axis("off")
    dest = Path(dest)
    with atomic_path(dest, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return dest


def write_pngs(out_dir: str | Path, doc: dict[str, Any]) -> list[Path]:
    return [plot_query(q, Path(out_dir) / png_name(i)) for i, q in enumerate(doc["queries"])]


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
section { margin-bottom: 2em; border-bottom: 1px solid #ddd; padding-bottom: 1em; }
h2 { font-size: 1.05em; font-weight: normal; }
.note { color: #a40; font-size: 0.85em; }
.hits { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; text-align: center; font-size: 0.75em; width: 110px; }
figure img { height: 200px; max-width: 110px; object-fit: contain; border: 1px solid #ccc; }
figcaption { overflow-wrap: anywhere; }
.meta { color: #666; font-size: 0.85em; }
"""


def write_html(html_dir: str | Path, doc: dict[str, Any]) -> Path:
    """``html_dir/index.html``: every query with its hits; images linked relatively."""
    html_dir = Path(html_dir)
    html_dir.mkdir(parents=True, exist_ok=True)
    base = html_dir.resolve()
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>rasa search</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>rasa search</h1>",
        f'<p class="meta">checkpoint {esc(doc["checkpoint"])} &middot; gallery '
        f"{esc(doc['gallery'])} ({doc['num_gallery']} images, {doc['num_skipped']} skipped) "
        f"&middot; re-ranked top {doc['k_test']} by ITM</p>",
    ]
    for i, q in enumerate(doc["queries"]):
        parts.append(f'<section id="q{i + 1}"><h2>{i + 1}. {esc(q["query"])}</h2>')
        if q.get("note"):
            parts.append(f'<p class="note">{esc(q["note"])}</p>')
        parts.append('<div class="hits">')
        for hit in q["hits"]:
            rel = Path(os.path.relpath(Path(hit["path"]).resolve(), base)).as_posix()
            src = esc(rel, quote=True)
            parts.append(
                f'<figure><a href="{src}"><img src="{src}" alt="{esc(hit["name"], quote=True)}" '
                f'loading="lazy"></a><figcaption>{hit["rank"]}. {hit["score"]:.3f}<br>'
                f"{esc(hit['name'])}</figcaption></figure>"
            )
        parts.append("</div></section>")
    parts.append("</body></html>")
    dest = html_dir / "index.html"
    write_text(dest, "\n".join(parts) + "\n")
    return dest
