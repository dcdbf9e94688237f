"""The decoding inspector as a picture: one row per generated token, its competitors as cells.

Each cell is a candidate token (the model's most probable first); its colour is the probability the decoding
settings gave it, its small print the model's own probability. Cells the filters removed are grey and hatched;
the token that was chosen has an orange frame. The right margin says how many tokens were eligible and how many
equally likely choices the distribution was worth (exp of its entropy).
"""

from __future__ import annotations

from pathlib import Path


def _settings_label(s) -> str:
    if s.strategy == "sample":
        return (f"sample · temperature {s.temperature:g} · top-k {s.top_k or 'off'} · top-p {s.top_p:g}"
                + (f" · seed {s.seed}" if s.seed is not None else ""))
    if s.strategy == "beam":
        return f"beam · {s.num_beams} beams"
    return "greedy"


def explain_figure(explanations, path, titles: list[str] | None = None, max_steps: int = 14,
                   columns: int = 7) -> Path:
    """Draw one block per explanation (stacked), at most ``max_steps`` rows and ``columns`` candidates each."""
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    from vlens.plots import plt, save_fig

    pyplot = plt()
    cmap = colormaps["Blues"]
    heights = [min(len(e.steps), max_steps) + 1.6 for e in explanations]
    fig, axes = pyplot.subplots(len(explanations), 1, figsize=(1.15 * columns + 3.6, 0.36 * sum(heights) + 0.6),
                                gridspec_kw={"height_ratios": heights}, squeeze=False)
    for k, (ax, e) in enumerate(zip(axes[:, 0], explanations)):
        steps = e.steps[:max_steps]
        n = len(steps)
        ax.set_xlim(-2.2, columns + 2.2)
        ax.set_ylim(n + 0.1, -1.5)
        ax.set_axis_off()
        head = titles[k] if titles else _settings_label(e.settings)
        summ = e.summary()
        text = e.caption.text if len(e.caption.text) <= 90 else e.caption.text[:89] + "…"
        ax.text(-2.2, -1.0, f"{head}: “{text}”", fontsize=9, fontweight="bold", va="center")
        ax.text(-2.2, -0.45, f"picked the model's top token at {summ.get('top_choice_steps', 0)} of {len(e.steps)} "
                f"steps; ≈{summ.get('mean_effective_choices', 0):.1f} effective choices per step; greedy: "
                f"“{e.greedy_text}”", fontsize=7.5, va="center", color="#444")
        for t, (st, tok, cands) in enumerate(zip(steps, e.tokens, e.candidate_tokens)):
            y = t + 0.5
            ax.text(-0.15, y, f"{t + 1}. {tok}", ha="right", va="center", fontsize=8.5, fontweight="bold")
            cells = list(zip(st.candidates, cands))
            shown = cells[:columns]
            if st.token_id not in [c.token_id for c, _ in shown]:  # the pick ranks lower: it takes the last cell
                shown = shown[:columns - 1] + [next(cell for cell in cells if cell[0].token_id == st.token_id)]
            for c_i, (c, ctext) in enumerate(shown):
                x = c_i + 0.05
                face = cmap(0.12 + 0.88 * c.p_sample) if c.kept else (0.88, 0.88, 0.88)
                ax.add_patch(Rectangle((x, t + 0.06), 0.9, 0.88, facecolor=face, hatch=None if c.kept else "////",
                                       edgecolor="#f28c28" if c.token_id == st.token_id else "white",
                                       linewidth=2.4 if c.token_id == st.token_id else 0.5))
                dark = c.kept and c.p_sample > 0.55
                colour = "white" if dark else ("#222" if c.kept else "#777")
                ax.text(x + 0.45, t + 0.36, ctext[:10], ha="center", va="center", fontsize=7.5, color=colour,
                        fontweight="bold" if c.token_id == st.token_id else "normal")
                ax.text(x + 0.45, t + 0.74, f"{c.p_sample:.2f} ({c.p_model:.2f})" if c.kept else
                        f"removed ({c.p_model:.2f})", ha="center", va="center", fontsize=5.8, color=colour)
            if st.rank > columns:
                ax.text(columns + 0.1, y, f"← rank {st.rank}", va="center", fontsize=7, color="#f28c28")
            ax.text(columns + 0.9, y, f"{st.eligible} eligible\n≈{st.effective:.1f} choices", va="center",
                    fontsize=6.5, color="#444")
        if len(e.steps) > n:
            more = len(e.steps) - n
            ax.text(-2.2, n + 0.05, f"… {more} more step{'s' if more > 1 else ''}", fontsize=7, color="#444", va="top")
    fig.text(0.01, 0.002, "cell colour and first number: probability under these settings; (in brackets): the "
                          "model's probability at temperature 1; hatched grey: removed by top-k / top-p; orange "
                          "frame: the token chosen", fontsize=6.5, color="#444")
    fig.tight_layout(rect=(0, 0.012, 1, 1))
    return save_fig(fig, path)
