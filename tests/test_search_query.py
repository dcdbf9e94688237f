"""Combined queries (rclip's form): the grammar, and the query vector against a hand computation with the encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlens.errors import ConfigError
from vlens.retrieval.query import Term, combine, parse_query, query_text


def test_grammar(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pool.jpg").write_bytes(b"not decoded by the parser")
    t = parse_query(["2:golden retriever", "+", "./pool.jpg", "-", "fruit"])
    assert t == [Term("text", "golden retriever", 2.0, 1), Term("image", "pool.jpg", 1.0, 1),
                 Term("text", "fruit", 1.0, -1)]
    # unquoted words between operators are one phrase; a web query is one string split the same way
    assert parse_query("sunset  on a beach - .5:people") == [Term("text", "sunset on a beach"),
                                                              Term("text", "people", 0.5, -1)]
    assert parse_query(["pool.jpg"]) == [Term("image", "pool.jpg")]  # an existing image file
    assert parse_query(["nope.jpg"]) == [Term("text", "nope.jpg")]  # no such file and no ./: text, as in rclip
    assert parse_query(["/abs/x.png"])[0].kind == "image"
    assert parse_query(["3.:id:7"]) == [Term("id", 7, 3.0)]
    assert parse_query(["1:2:1 ratio"]) == [Term("text", "2:1 ratio")]  # escape a leading N:
    assert parse_query(["a-b + c"]) == [Term("text", "a-b + c")]  # operators are whole words only
    terms = parse_query("2:dog + id:3 - snow")
    assert parse_query(query_text(terms)) == terms
    for bad, said in [([], "empty"), (["+", "dog"], "cannot start"), (["dog", "-"], "ends with"),
                      (["dog", "+", "-", "cat"], "on each side"), (["0:dog"], "above 0"),
                      (["5000:dog"], "above 1000")]:
        with pytest.raises(ConfigError, match=said):
            parse_query(bad)
    with pytest.raises(ConfigError, match="cancel out"):
        combine(parse_query("dog - dog"), np.ones((2, 4), np.float32) / 2)


def test_combined_query_equals_hand_computation(shapes_index, clip_encoder, tmp_path, monkeypatch, cli):
    from PIL import Image

    from vlens.retrieval.search import Searcher

    idx, photos = shapes_index(tmp_path)
    monkeypatch.chdir(photos)
    s = Searcher(idx, encoder=clip_encoder)
    words = ["2.5:a red circle", "+", "./test_00003.png", "-", "0.5:a blue square", "+", "id:2"]
    got = s.query_vector(parse_query(words))
    # by hand: each term's unit vector times sign and weight, summed, then scaled to length 1
    t1, t3 = clip_encoder.encode_texts(["a red circle", "a blue square"])
    img = clip_encoder.encode_images([Image.open(photos / "test_00003.png").convert("RGB")])[0]
    want = 2.5 * t1 + img - 0.5 * t3 + s.index.vector(2)
    want /= np.linalg.norm(want)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert abs(np.linalg.norm(got) - 1) < 1e-5
    # the hits are the brute-force ranking of that vector over the stored vectors
    ids = sorted(s.index.rows(range(1, 100)))
    stored = np.stack([s.index.vector(i) for i in ids])
    order = np.argsort(-(stored @ want), kind="stable")[:5]
    hits = s.query(words, k=5)
    assert [h.id for h in hits] == [ids[j] for j in order]
    np.testing.assert_allclose([h.score for h in hits], (stored @ want)[order], atol=1e-5)

    # the CLI gives the same hits, and --paths / -0 print them bare
    code, out, err = cli("search", idx, *words, "-k", "5", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert [h["id"] for h in res["hits"]] == [h.id for h in hits]
    assert [t["sign"] for t in res["terms"]] == [1, 1, -1, 1] and res["terms"][0]["weight"] == 2.5
    code, out, _ = cli("search", idx, *words, "-k", "3", "--paths")
    assert out.splitlines() == [str(s.index.root / h.path) for h in hits[:3]]
    code, out, _ = cli("search", idx, *words, "-k", "3", "-0")
    assert out.split("\0") == [str(s.index.root / h.path) for h in hits[:3]] + [""]
    # --image is one more + term of weight 1
    code, out, _ = cli("search", idx, "a red circle", "--image", photos / "test_00003.png", "-k", "5", "--json")
    want2 = t1 + img
    want2 /= np.linalg.norm(want2)
    scores = [h["score"] for h in json.loads(out)["hits"]]
    np.testing.assert_allclose(scores, np.sort(stored @ want2)[::-1][:5], atol=1e-4)
    # filters from the index's stored metadata (format, folder)
    code, out, err = cli("search", idx, *words, "-k", "5", "--format", "png", "--folder", ".", "--json")
    assert [h["id"] for h in json.loads(out)["hits"]] == [h.id for h in hits] and json.loads(out)["passed"] == 12
    code, out, err = cli("search", idx, "a red circle", "--folder", "elsewhere")
    assert code == 0 and "no results (no image passes the filters)" in out and "0 of 12 images pass" in err
    for args, said in [(["-", "x"], "cannot start"), (["dog", "+"], "ends with"), (["id:999"], "no image with id"),
                       (["x", "--json", "--paths"], "choose one output")]:
        code, _, err = cli("search", idx, "--", *args) if args[0] == "-" else cli("search", idx, *args)
        assert code == 1 and said in err and "Traceback" not in err, err
