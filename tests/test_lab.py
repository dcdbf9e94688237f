"""vlens lab: the report files, the manifest, and a failing section that does not lose the others."""

import json

from vlens.report import lab
from vlens.report.section import Section


def test_lab_data_section_writes_report(tmp_path, cli):
    code, out, err = cli("lab", "--out", tmp_path / "lab", "--quick", "--only", "data")
    assert code == 0, err
    html = (tmp_path / "lab" / "report.html").read_text()
    md = (tmp_path / "lab" / "report.md").read_text()
    assert "<h2 id='s0'>Data</h2>" in html and "## Data" in md and "figures/data_shapes.png" in md
    man = json.loads((tmp_path / "lab" / "manifest.json").read_text())
    assert man["sections"] == ["data"] and man["failed"] == [] and man["versions"]["torch"]
    assert man["metrics"]["data"]["target"]["images"] == 180
    for name in ("data_shapes.png", "data_photos.png", "data_shapes_pretrain.png"):
        assert (tmp_path / "lab" / "figures" / name).stat().st_size > 1000
    code, out, err = cli("lab", "--out", tmp_path / "lab2", "--quick", "--only", "data", "--json")
    got = json.loads(out)  # stdout is the manifest alone, progress stays on stderr
    assert code == 0 and got["sections"] == ["data"] and got["report"] == str(tmp_path / "lab2" / "report.html")


def _ok(ctx):
    s = Section("Fine")
    s.table(["a", "b"], [["x", 1.234]])
    return s


def _boom(ctx):
    raise RuntimeError("section exploded")


def test_failing_section_is_reported_in_place(tmp_path, monkeypatch, cli):
    monkeypatch.setattr(lab, "SECTIONS", [("boom", f"{__name__}:_boom"), ("ok", f"{__name__}:_ok")])
    code, _, err = cli("lab", "--out", tmp_path, "--quick")
    assert code == 1 and "section(s) failed: boom" in err
    html = (tmp_path / "report.html").read_text()
    assert "section exploded" in html and "<td>1.2</td>" in html
    code, _, err = cli("lab", "--out", tmp_path, "--only", "nope")
    assert code == 1 and "unknown section" in err


def test_html_renders_inline_markdown_and_escapes():
    from vlens.report.render import inline_html

    assert inline_html("The **shapes** set, `a_b*c*`, _note_") == \
        "The <strong>shapes</strong> set, <code>a_b*c*</code>, <em>note</em>"
    assert inline_html("<b>x</b> & 3 * 4 * 5 snake_case") == "&lt;b&gt;x&lt;/b&gt; &amp; 3 * 4 * 5 snake_case"


def test_caption_sweep_sentence_is_computed_from_the_table():
    """The lab's words under the sweep table come from the numbers: best/worst cells, the temperature trend,
    and the cold-temperature spread (0 -> "the same BLEU-4", not "within 0.0 points")."""
    from vlens.report.sections.caption import describe

    def cell(t, k, b):
        return {"temperature": t, "top_k": k, "BLEU-4": b, "BLEU-4_std": 1.0}

    grid = [cell(0.3, 10, 48.0), cell(0.3, 100, 48.0), cell(1.0, 10, 46.0), cell(1.0, 100, 30.0)]
    text = describe(grid, [], greedy_bleu4=51.0)
    assert "best sampled setting is top-k 10, temperature 0.3 (48.0" in text
    assert "worst top-k 100, temperature 1.0 (30.0" in text
    assert "from 48.0 at temperature 0.3 to 38.0 at 1.0: lower temperature is better" in text
    assert "every top-k gives the same BLEU-4" in text and "within 0.0" not in text
    grid[1] = cell(0.3, 100, 45.5)
    assert "all top-k values lie within 2.5 points" in describe(grid, [], greedy_bleu4=51.0)
