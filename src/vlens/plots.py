"""Matplotlib helpers shared by every capability that draws and by the report (Agg backend, atomic saves).

They sit below the capabilities (match, caption, ssl, retrieval) so that drawing never imports the report layer."""

from __future__ import annotations

from pathlib import Path


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    _printable_texts()
    return pyplot


def _printable_texts() -> None:
    """Every text matplotlib draws for vlens goes through :func:`vlens.images.shown_name`: a title naming a file
    whose name is not UTF-8 (``caf\\xe9.png``) or holds a newline would otherwise stop the font renderer ("a bug
    in vlens" after all the work)."""
    from matplotlib.text import Text

    if getattr(Text.set_text, "vlens_printable", False):
        return
    from vlens.images import shown_name

    original = Text.set_text

    def set_text(self, s):
        if isinstance(s, str) and any("\udc80" <= c <= "\udcff" for c in s):
            s = shown_name(s)
        return original(self, s)

    set_text.vlens_printable = True
    Text.set_text = set_text


def save_fig(fig, path, dpi: int = 110) -> Path:
    from vlens.runs import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    plt().close(fig)
    return Path(path)


def image_grid(images, titles, path, cols: int = 4, cell: float = 2.6, fontsize: int = 7) -> Path:
    """A grid of PIL images (or None for blank) with a title under each."""
    pyplot = plt()
    rows = max(1, -(-len(images) // cols))
    fig, axes = pyplot.subplots(rows, cols, figsize=(cols * cell, rows * (cell + 0.5)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, im, t in zip(axes.flat, images, titles):
        if im is not None:
            ax.imshow(im)
        ax.set_title(t, fontsize=fontsize, wrap=True)
    fig.tight_layout()
    return save_fig(fig, path)
