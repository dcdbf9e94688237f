"""Attribute accuracy: does a caption of a shapes scene name the right colour, shape, size, count and place?

n-gram metrics (BLEU, CIDEr) reward a caption for the template words and the colour it shares with the
references; they cannot tell whether the model saw the shape or where the object is. Here each generated
caption is parsed with the shapes dataset's own grammar (:mod:`vlens.data.shapes`: noun phrases
``a [single] [size] colour shape``, the synonyms big/little/box/rhombus, the nine position phrases and the four
relations) and checked against the scene's objects. Colours are unique within a scene, so each named object is
matched to the scene object of its colour; a colour that is not in the scene makes that object's shape and size
wrong.

Per caption (``None`` = the caption makes no claim of that kind, so it is not counted):
- ``colour``: the set of colours named equals the scene's;
- ``count``: as many objects named as the scene has;
- ``shape``: every named object has its object's shape (``shape_single``: the same on one-object scenes);
- ``size``: every size word said (small/little, large/big) is right; ``None`` when no size is said;
- ``position``: one-object scenes: the position phrase is the scene's (missing phrase = wrong);
- ``relation``: several objects and a relation said ("X to the left of Y", "X above Y"): it holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlens.data.shapes import COLOURS, SHAPES, SYNONYMS, Obj, _relation, _where

ATTRIBUTES = ("colour", "count", "shape", "shape_single", "size", "position", "relation")
LABELS = {
    "colour": "colours named (all scenes)",
    "count": "number of objects (all scenes)",
    "shape": "shape words (all scenes)",
    "shape_single": "shape word (one-object scenes)",
    "size": "size words, when said",
    "position": "position phrase (one-object scenes)",
    "relation": "spatial relation, when said (several objects)",
}
_SHAPE_WORDS = {w: s for s in SHAPES for w in SYNONYMS[s]}
_SIZE_WORDS = {w: s for s in ("large", "small") for w in SYNONYMS[s]}
_RELATIONS = ("to the left of", "to the right of", "above", "below")
_PLACES = tuple(
    sorted(
        {_where(Obj("circle", "red", "small", x, y, 0.1, 0.0)) for x in (0.2, 0.5, 0.8) for y in (0.2, 0.5, 0.8)},
        key=len,
        reverse=True,
    )
)


@dataclass(frozen=True)
class NamedObject:
    colour: str
    shape: str | None
    """canonical shape (box -> square, rhombus -> diamond); None when the colour is not followed by a shape."""
    size: str | None
    """"large" / "small" when said (big/little map to them), else None."""
    start: int
    end: int
    """word span [start, end) in the caption."""


@dataclass(frozen=True)
class ParsedCaption:
    objects: tuple[NamedObject, ...]
    position: str | None
    """the first of the nine position phrases found, e.g. "in the top left corner"."""
    relation: tuple[int, str, int] | None
    """(index of the first object, relation phrase, index of the second) for "X REL Y"."""


def parse_caption(text: str) -> ParsedCaption:
    """Read objects, the position phrase and a relation from a caption written in the shapes grammar."""
    words = text.lower().replace(",", " , ").replace(":", " : ").replace(".", " ").split()
    objects: list[NamedObject] = []
    i = 0
    while i < len(words):
        if words[i] not in COLOURS:
            i += 1
            continue
        start = i
        size = None
        j = i - 1
        while j >= 0 and words[j] in (*_SIZE_WORDS, "single", "a", "an", "one"):  # "a single big red ..."
            size = size or _SIZE_WORDS.get(words[j])
            start = j
            j -= 1
        shape = _SHAPE_WORDS.get(words[i + 1]) if i + 1 < len(words) else None
        end = i + (2 if shape else 1)
        objects.append(NamedObject(words[i], shape, size, start, end))
        i = end
    joined = " " + " ".join(words) + " "
    position = next((p for p in _PLACES if f" {p} " in joined), None)
    relation = None
    for k in range(len(objects) - 1):
        between = " ".join(words[objects[k].end : objects[k + 1].start])
        for rel in _RELATIONS:
            if between == rel or between.endswith(" " + rel) or between.startswith(rel + " "):
                relation = (k, rel, k + 1)
                break
        if relation:
            break
    return ParsedCaption(tuple(objects), position, relation)


def _as_obj(o: dict) -> Obj:
    return Obj(o["shape"], o["colour"], o.get("size", "small"), float(o["cx"]), float(o["cy"]), 0.1, 0.0)


def caption_attributes(text: str, objects: list[dict]) -> dict[str, bool | None]:
    """Right (True) / wrong (False) / not claimed (None) per attribute for one caption of a scene.

    ``objects``: the scene's objects as in the shapes ``dataset.json`` (shape, colour, size, cx, cy)."""
    parsed = parse_caption(text)
    truth = {o["colour"]: o for o in objects}
    named = parsed.objects
    out: dict[str, bool | None] = dict.fromkeys(ATTRIBUTES)
    out["colour"] = {n.colour for n in named} == set(truth) and len(named) == len(truth)
    out["count"] = len(named) == len(objects)
    out["shape"] = bool(named) and all(n.colour in truth and n.shape == truth[n.colour]["shape"] for n in named)
    if len(objects) == 1:
        out["shape_single"] = out["shape"] and len(named) == 1
        out["position"] = parsed.position == _where(_as_obj(objects[0]))
    sized = [n for n in named if n.size]
    if sized:
        out["size"] = all(n.colour in truth and n.size == truth[n.colour].get("size") for n in sized)
    if len(objects) > 1 and parsed.relation:
        a, rel, b = parsed.relation
        ca, cb = named[a].colour, named[b].colour
        out["relation"] = ca in truth and cb in truth and _relation(_as_obj(truth[ca]), _as_obj(truth[cb])) == rel
    return out


@dataclass(frozen=True)
class AttributeScores:
    accuracy: dict[str, float]
    """attribute -> percent of the captions that claim it which are right (x100, like the COCO metrics)."""
    counts: dict[str, int]
    """attribute -> how many captions were counted."""

    def as_dict(self) -> dict:
        return {"accuracy": dict(self.accuracy), "counts": dict(self.counts)}

    def markdown(self) -> str:
        from vlens.tables import markdown_table

        rows = [[LABELS[a], f"{self.accuracy[a]:.1f}%", self.counts[a]] for a in ATTRIBUTES if a in self.accuracy]
        return markdown_table(["attribute", "accuracy", "captions"], rows, align="lrr")


def score_attributes(captions: dict[str, str], objects: dict[str, list[dict]]) -> AttributeScores:
    """Attribute accuracies of ``captions`` (sample id -> caption) against ``objects`` (sample id -> objects).

    Ids without objects are ignored; an attribute no caption claims is left out."""
    hits: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    for sid, text in captions.items():
        if not objects.get(sid):
            continue
        for a, v in caption_attributes(text, objects[sid]).items():
            if v is not None:
                hits[a].append(bool(v))
    return AttributeScores(
        {a: 100.0 * sum(v) / len(v) for a, v in hits.items() if v},
        {a: len(v) for a, v in hits.items() if v},
    )


SWEEP_ATTRIBUTES = ("colour", "count", "shape_single", "position", "relation")
"""The attributes a sweep or the lab reports per run, as columns ``acc:NAME``."""


def attribute_columns(results: list[dict], objects: dict[str, list[dict]]) -> dict[str, float]:
    """``{"acc:shape_single": 91.0, ...}`` for COCO-style results (image_id, caption); {} without objects."""
    if not objects:
        return {}
    acc = score_attributes({r["image_id"]: r["caption"] for r in results}, objects).accuracy
    return {f"acc:{a}": acc[a] for a in SWEEP_ATTRIBUTES if a in acc}
