import statistics

from vlens.sweep import expand_grid, pivot, read_rows, run_sweep, summarize, summary_table


def test_expand_grid_order_and_size():
    pts = expand_grid({"a": [1, 2], "b": ["x", "y", "z"]})
    assert len(pts) == 6
    assert pts[0] == {"a": 1, "b": "x"} and pts[1] == {"a": 1, "b": "y"} and pts[-1] == {"a": 2, "b": "z"}


def test_run_sweep_writes_csv_and_resumes(tmp_path):
    calls = []

    def fn(p, seed):
        calls.append((p["k"], seed))
        return {"score": p["k"] * 10 + seed, "name": f"r{seed}"}

    pts = expand_grid({"k": [1, 2], "temp": [0.5]})
    rows = run_sweep(pts, fn, tmp_path, seeds=[0, 1])
    assert len(rows) == 4 and len(calls) == 4
    on_disk = read_rows(tmp_path / "results.csv")
    assert on_disk[0] == {"k": 1, "temp": 0.5, "seed": 0, "score": 10, "name": "r0"}
    # A rerun with one more seed only runs the missing points.
    rows = run_sweep(pts, fn, tmp_path, seeds=[0, 1, 2])
    assert len(rows) == 6 and calls[4:] == [(1, 2), (2, 2)]


def test_summarize_mean_std_against_statistics():
    rows = [{"k": 1, "seed": s, "m": v} for s, v in enumerate([1.0, 2.0, 4.0])] + [{"k": 2, "seed": 0, "m": 5.0}]
    summ = summarize(rows, by=["k"], metrics=["m"])
    assert summ[0]["m"] == statistics.fmean([1, 2, 4]) and summ[0]["m_std"] == statistics.stdev([1, 2, 4])
    assert summ[1]["n"] == 1 and summ[1]["m_std"] == 0.0
    md = summary_table(summ, ["k"], ["m"], digits=2)
    assert "| 1 | 2.33 ± 1.53 | 3 |" in md and "| 2 | 5.00 | 1 |" in md


def test_pivot_table_shape():
    rows = [{"top_k": k, "t": t, "seed": s, "b": k + t + s} for k in (10, 50) for t in (0.3, 1.0) for s in (0, 1)]
    headers, table = pivot(summarize(rows, ["top_k", "t"], ["b"]), "top_k", "t", "b")
    assert headers == ["top_k \\ t", "0.3", "1.0"] and len(table) == 2 and table[0][1] == "10.8 ± 0.7"


def test_markdown_table_alignment_and_floats():
    """The one table formatter: a letter per column (missing letters: left), floats with one decimal."""
    from vlens.tables import markdown_table

    md = markdown_table(["name", "score", "n"], [["a", 12.345, 3], ["b", 0.05, 10]], align="lr")
    assert md == "| name | score | n |\n|---|---:|---|\n| a | 12.3 | 3 |\n| b | 0.1 | 10 |\n"
    summ = summarize([{"k": 1, "m": 2.0, "seed": 0}], ["k"], ["m"])
    assert summary_table(summ, ["k"], ["m"]).splitlines()[1] == "|---|---:|---:|"  # numbers to the right
