"""Which model each task uses when no ``--model`` is given: data, read by the one resolver (:mod:`vlens.models.hub`).

Real checkpoint first (when it is in the Hugging Face cache, or can be downloaded once), the embedded builtin
otherwise. The resolver says which it picked and why; the CLI prints the notice (:func:`notice`), the library never
prints. Change a default here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

MATCH_FALLBACK = "builtin:dino-tiny*0.5+sift:8*0.5"
"""What match, explore, segment and the correspondence benchmarks run when facebook/dino-vits8 cannot be had.
Any descriptor spec ``vlens.match.features`` resolves. Chosen (issue 30, `vlens bench pairs`, 448 px, stride 8 x
binning x refinement x fusion weights, on graffiti, aloe and the 12 opencv:heldout warps together) with the defaults
`vlens match` applies: log-binning on (2 levels, :data:`vlens.match.binning.MATCH_BIN_LEVELS`) and quadratic
refinement. PCK@5 graffiti / aloe / held-out: 60.8 / 63.6 / 80.3 (mean 68.2), against 30.9 / 56.1 / 69.3 for
refined dense SIFT and 37.5 / 58.3 / 71.8 for the previous default (weights 0.2 / 0.8, no binning). Weights 0.6 / 0.4
with soft refinement were 0.2 ahead at mean PCK@5 (a tie) and 4.2 behind at mean PCK@1. See README and
benchmarks/RESULTS.md."""


BUILTIN_KNOWS = {
    "builtin:blip-tiny": "a 1.2M-parameter BLIP trained only on vlens's synthetic shapes: it describes coloured "
                         "shapes, not photos",
    "builtin:clip-tiny": "a 1.7M-parameter CLIP trained only on vlens's synthetic shapes: it ranks shapes captions, "
                         "not photos",
    "builtin:dino-tiny": "a 4-layer ViT/8 trained by vlens on 34 photos (scikit-image, opencv-doc) and shapes "
                         "images, far weaker than DINO on new photos",
}
"""What each embedded model knows, in one line (the notice, ``vlens models list``, the web page)."""

SOURCES = ("builtin", "cache", "hub", "local")
"""Where a loaded model came from: embedded, the Hugging Face cache, downloaded in this run, a folder on disk."""


@dataclass(frozen=True)
class TaskDefault:
    task: str
    kind: str  # the model kind vlens.models.load takes: backbone | captioner | dual_encoder
    real: str  # the Hugging Face hub id used when it can be had
    size_mb: int  # about what the download weighs (weights + configs), said before it starts
    fallback: str  # the spec that runs otherwise
    commands: str  # which commands this default serves

    @property
    def fetch_command(self) -> str:
        return f"vlens models fetch {self.real}"

    @property
    def knows(self) -> str:
        return knows(self.fallback)


def first_part(spec: str) -> str:
    """The first part of a fused descriptor spec (``builtin:dino-tiny*0.3+sift:8*0.7`` -> ``builtin:dino-tiny``)."""
    return str(spec).split("+")[0].split("*")[0].strip()


def knows(spec: str) -> str:
    """What an embedded model (or a fused spec starting with one) knows; "" for anything else."""
    parts = [first_part(p) for p in str(spec).split("+")]  # a fusion: what its first (builtin) part knows
    what = BUILTIN_KNOWS.get(parts[0], "")
    return what + (f"; fused with {' and '.join(parts[1:])}" if what and len(parts) > 1 else "")


TASKS: dict[str, TaskDefault] = {
    "caption": TaskDefault("caption", "captioner", "Salesforce/blip-image-captioning-base", 990, "builtin:blip-tiny",
                           "caption, serve (Caption tab)"),
    "retrieval": TaskDefault("retrieval", "dual_encoder", "openai/clip-vit-base-patch32", 605, "builtin:clip-tiny",
                             "retrieval eval, index build (search reuses the index's model)"),
    "match": TaskDefault("match", "backbone", "facebook/dino-vits8", 87, MATCH_FALLBACK,
                         "match, explore, bench crops/pairs/keypoints/segment, serve (Match tab)"),
}

TASK_OF_KIND = {d.kind: d.task for d in TASKS.values()}


def for_task(task: str) -> TaskDefault:
    if task not in TASKS:
        raise KeyError(f"unknown task '{task}'; one of {', '.join(TASKS)}")
    return TASKS[task]


def for_kind(kind: str) -> TaskDefault:
    return TASKS[TASK_OF_KIND[kind]]


def notice(task: str, spec: str, reason: str) -> str:
    """The one stderr line said when ``task`` runs the builtin ``spec`` instead of its real model (the CLI prints
    it; the library only returns the reason)."""
    d = for_task(task)
    what = knows(spec)
    return (f"note: {d.task} runs {spec}{f' ({what})' if what else ''} because {d.real} {reason}; for real photos "
            f"run `{d.fetch_command}` (about {d.size_mb} MB) where the hub is reachable, or pass --model")
