"""Can a captioner's vision tower see where an object is and what shape it is? A linear probe says.

On single-object shapes scenes, take the vision tower's output tokens (the ones the text decoder cross-attends
to) and fit a multinomial logistic regression (scikit-learn) on the training images for two labels: the position
phrase of the caption grammar (9 classes: "in the top left corner" ... "in the middle") and the shape (5
classes). Two views of the tokens:
- "object token": the one patch token under the object's centre (D features). Cross-attention reads tokens by
  content, not by index, so this is what the decoder can use once it has found the object: does that token
  itself say what shape it belongs to and where it is?
- "all tokens": every patch token flattened, (L*D) features: the information anywhere in the map, its token
  index included (an upper bound the decoder cannot read directly; with few images it overfits).

Accuracy on held-out images far above chance means the information is in the features and a caption that gets
it wrong is the decoder's (or the training's) fault; accuracy near chance means the tower cannot see it (patch
size, resolution, position codes, preprocessing). The same probe on raw pixels pooled to the patch grid is the
reference a tower should beat.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

POSITION_PHRASES = (
    "in the top left corner", "at the top", "in the top right corner",
    "on the left", "in the middle", "on the right",
    "in the bottom left corner", "at the bottom", "in the bottom right corner",
)


def position_class(cx: float, cy: float) -> int:
    """Index into :data:`POSITION_PHRASES` of the phrase the shapes grammar uses for a centre (cx, cy) in [0, 1]."""
    from vlens.data.shapes import Obj, _where

    return POSITION_PHRASES.index(_where(Obj("circle", "red", "small", cx, cy, 0.1, 0.0)))


@dataclass(frozen=True)
class ProbeResult:
    target: str
    """"position" or "shape"."""
    features: str
    """what was probed: "object token", "all tokens" or "pixels"."""
    train_accuracy: float
    test_accuracy: float
    chance: float
    """accuracy of always answering the most common training label, on the test images."""
    n_train: int
    n_test: int


def tower_features(model, pixel_values: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """BLIP vision tower patch tokens, flattened: (B, 3, S, S) -> (B, L*D) (the [CLS] token dropped)."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(pixel_values), batch_size):
            h = model.vision_model(pixel_values=pixel_values[start : start + batch_size]).last_hidden_state
            out.append(h[:, 1:].flatten(1))  # (b, L*D)
    return torch.cat(out)


def object_token_features(model, pixel_values: torch.Tensor, centres, batch_size: int = 64) -> torch.Tensor:
    """The patch token under each object's centre: (B, 3, S, S), centres [(cx, cy)] in [0, 1] -> (B, D)."""
    cfg = model.config.vision_config
    g = cfg.image_size // cfg.patch_size
    idx = torch.tensor([min(int(cy * g), g - 1) * g + min(int(cx * g), g - 1) + 1 for cx, cy in centres])  # +1: [CLS]
    out = []
    with torch.inference_mode():
        for start in range(0, len(pixel_values), batch_size):
            h = model.vision_model(pixel_values=pixel_values[start : start + batch_size]).last_hidden_state
            out.append(h[torch.arange(len(h)), idx[start : start + batch_size]])  # (b, D)
    return torch.cat(out)


def pixel_features(pixel_values: torch.Tensor, grid: int) -> torch.Tensor:
    """Reference features: the image average-pooled to a grid x grid map per channel, (B, 3*grid*grid)."""
    return torch.nn.functional.adaptive_avg_pool2d(pixel_values, grid).flatten(1)  # (B, 3*g*g)


def linear_probe(
    train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray, c: float = 0.1
) -> tuple[float, float]:
    """Standardise, fit a multinomial logistic regression (L2, strength 1/c), return (train acc, test acc)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=300))
    clf.fit(train_x.numpy(), train_y)
    return float(clf.score(train_x.numpy(), train_y)), float(clf.score(test_x.numpy(), test_y))


def single_object_labels(samples, objects: dict) -> tuple[list, np.ndarray, np.ndarray]:
    """Samples with exactly one object -> (those samples, position classes (N,), shape classes (N,)).

    ``objects`` maps sample id -> its objects (:func:`vlens.data.shapes.scene_objects`)."""
    from vlens.data.shapes import SHAPES

    kept = [s for s in samples if len(objects.get(s.id, [])) == 1]
    pos = np.array([position_class(objects[s.id][0]["cx"], objects[s.id][0]["cy"]) for s in kept], dtype=int)
    shape = np.array([SHAPES.index(objects[s.id][0]["shape"]) for s in kept], dtype=int)
    return kept, pos, shape


def probe_captioner(
    loaded, train_samples, test_samples, objects: dict, c: float = 0.1, with_pixels: bool = True
) -> list[ProbeResult]:
    """Position and shape probes on a loaded BLIP captioner's vision tower (and on pooled pixels)."""
    from vlens.images import load_image

    model, proc = loaded.model.eval(), loaded.image_processor
    train, train_pos, train_shape = single_object_labels(train_samples, objects)
    test, test_pos, test_shape = single_object_labels(test_samples, objects)
    if len(train) < 10 or len(test) < 5:
        from vlens.errors import DatasetError

        raise DatasetError("the probe needs a shapes dataset with single-object scenes (objects in its metadata)")

    def pixels(samples):
        return proc(images=[load_image(s.image_path) for s in samples], return_tensors="pt")["pixel_values"]

    px_train, px_test = pixels(train), pixels(test)
    cfg = model.config.vision_config
    grid = cfg.image_size // cfg.patch_size
    def centres(samples):
        return [(objects[s.id][0]["cx"], objects[s.id][0]["cy"]) for s in samples]

    feats = {
        "object token": (
            object_token_features(model, px_train, centres(train)),
            object_token_features(model, px_test, centres(test)),
        ),
        "all tokens": (tower_features(model, px_train), tower_features(model, px_test)),
    }
    if with_pixels:
        feats["pixels"] = (pixel_features(px_train, grid), pixel_features(px_test, grid))
    results = []
    for name, (xtr, xte) in feats.items():
        for target, ytr, yte in (("position", train_pos, test_pos), ("shape", train_shape, test_shape)):
            tr, te = linear_probe(xtr, ytr, xte, yte, c)
            chance = float(np.mean(yte == np.bincount(ytr).argmax()))
            results.append(ProbeResult(target, name, tr, te, chance, len(train), len(test)))
    return results
