"""Making, checking and choosing an ONNX export of one tower (torch side).

:func:`prepare` is the one entry: given an :class:`~vlens.engines.store.ExportId`, the torch module and its inputs,
it returns an :class:`~vlens.engines.runtime.OrtTower` to run, or None (run torch), following the engine:

1. ``torch``: None.
2. A usable export in the cache: ``onnx`` takes it; ``auto`` takes it when its recorded timing chose it.
3. Otherwise (none yet, or a damaged one, which is rebuilt) the tower is exported once with torch's TorchScript
   exporter (``dynamo=False``; the batch axis, and the sequence axis of a text tower, dynamic) into a temp folder,
   with a progress line. It is then **verified**: torch and ONNX Runtime run a probe batch that differs from the
   export's example (another batch size, another text length), and the export is kept only if
   ``max |torch - onnx| <= 1e-4 x max |torch|`` (int8: cosine >= 0.99 per row). A mismatch is recorded as
   *refused* (so later runs do not retry) and the tower runs on torch, with one line saying so.
4. ``auto``'s measurement: a warm-up and :data:`TIMED_RUNS` timed runs of each engine on the probe, median kept,
   recorded in the manifest with the choice (the faster one).
"""

from __future__ import annotations

import time

import numpy as np

from vlens.engines import check_engine
from vlens.engines.store import OPSET, ExportId, Found, finish, lookup, runtime_version

TOLERANCE = 1e-4
"""Largest max-abs difference between torch and ONNX Runtime, relative to the largest torch output value."""
INT8_MIN_COSINE = 0.99
TIMED_RUNS = 3
_OPEN: dict[str, object] = {}  # export folder -> OrtTower, so a process opens each session once


def _note(line: str) -> None:
    from vlens.models.hub import note

    note(line)


def _numpy(inputs: dict) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in inputs.items()}


def compare(ref: np.ndarray, got: np.ndarray, quantize: str = "none") -> dict:
    """How far ``got`` is from ``ref``: max abs diff, the scale (max |ref|), the allowed diff, cosine, ok."""
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    if ref.shape != got.shape:
        return {"ok": False, "why": f"shape {got.shape} instead of {ref.shape}"}
    diff = float(np.max(np.abs(ref - got))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    r, g = ref.reshape(ref.shape[0], -1), got.reshape(got.shape[0], -1)
    cos = float(np.min(np.sum(r * g, 1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1), 1e-12)))
    allowed = TOLERANCE * max(scale, 1e-12)
    ok = cos >= INT8_MIN_COSINE if quantize == "int8" else diff <= allowed
    return {"ok": bool(ok and np.isfinite(got).all()), "max_abs_diff": diff, "scale": scale, "allowed": allowed,
            "min_cosine": cos}


def _median_ms(fn, runs: int = TIMED_RUNS) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def _open(found: Found):
    from vlens.engines.runtime import OrtTower

    key = str(found.folder)
    tower = _OPEN.get(key)
    if tower is None or tower.manifest.get("sha256") != found.manifest.get("sha256"):
        tower = _OPEN[key] = OrtTower(found.onnx, found.manifest)
    return tower


def forget_sessions() -> None:
    """Close the sessions this process opened (tests; after ``vlens models rm``)."""
    _OPEN.clear()


def prepare(eid: ExportId, module, example: dict, probe: dict, dynamic_axes: dict, engine: str = "auto", *,
            what: str = "") -> object | None:
    """An :class:`~vlens.engines.runtime.OrtTower` for ``module`` under ``engine``, or None to run torch.

    ``module``: an eval-mode torch module (fp32, CPU) whose ``forward`` takes ``example``'s keys as positional
    arguments in that order and returns one tensor. ``example``: the export's inputs; ``probe``: the verification
    and timing inputs (use another batch size so a baked-in batch cannot pass). ``dynamic_axes``: per input name
    (and ``output``) the dynamic axes, as ``torch.onnx.export`` takes them. ``what``: how notes name the tower.
    """
    from vlens.engines.runtime import available

    engine = check_engine(engine)
    what = what or f"{eid.tower} of {eid.model}"
    if engine == "torch":
        return None
    if not available():
        if engine == "onnx":
            _note(f"onnxruntime is not installed: {what} runs on torch (pip install onnxruntime)")
        return None
    found = lookup(eid)
    if found.state == "corrupt":
        _note(f"the ONNX export of {what} is damaged ({found.why}); rebuilding it")
    if found.state in ("missing", "corrupt"):
        found = _export(eid, module, example, probe, dynamic_axes, what)
    if found.state == "refused":
        if engine == "onnx":
            _note(f"{what}: the ONNX export was refused ({found.why}); running on torch")
        return None
    if engine == "auto" and found.manifest.get("choice") != "onnx":
        return None
    return _open(found)


def _export(eid: ExportId, module, example: dict, probe: dict, dynamic_axes: dict, what: str) -> Found:
    import torch

    from vlens.engines.runtime import OrtTower
    from vlens.runs import make_temp_dir, remove_stale_temps

    final = eid.folder()
    remove_stale_temps(final, older_than_s=3600)  # what a killed export left (an hour: another may be running)
    tmp = make_temp_dir(final.parent, final.name)
    manifest = {"format": 2, "model": eid.model, "fingerprint": eid.fingerprint, "tower": eid.tower,
                "family": eid.family, "quantize": eid.quantize, "opset": OPSET, "onnxruntime": runtime_version(),
                "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "inputs": list(example), "status": "ok"}
    t0 = time.perf_counter()
    _note(f"exporting {what} to ONNX (once; kept in {final.parent}) ...")
    onnx_path = tmp / "model.onnx"
    try:
        fp32 = tmp / "fp32.onnx"
        import warnings

        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shapes it records as constants: the check below
            torch.onnx.export(module, tuple(example.values()), str(fp32), input_names=list(example),
                              output_names=["output"], dynamic_axes=dynamic_axes, opset_version=OPSET,
                              do_constant_folding=True, dynamo=False)
        raw = fp32
        if eid.quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            raw = tmp / "int8.onnx"
            quantize_dynamic(str(fp32), str(raw), weight_type=QuantType.QInt8)
        from vlens.engines.runtime import optimize

        optimize(raw, onnx_path)  # the graph every later session loads as is
        for f in {fp32, raw}:
            f.unlink()
        manifest["optimized"] = "extended"
        with torch.no_grad():
            ref = module(*probe.values()).float().cpu().numpy()
        tower = OrtTower(onnx_path, manifest)  # opened as every later run opens it
        feed = _numpy(probe)
        got = tower(**feed)
        verdict = compare(ref, got, eid.quantize)
        manifest["verify"] = {**verdict, "probe": {k: list(v.shape) for k, v in probe.items()}}
        if not verdict["ok"]:
            why = verdict.get("why") or (f"max |torch - onnx| {verdict['max_abs_diff']:.2e} > allowed "
                                         f"{verdict['allowed']:.2e}" if eid.quantize != "int8" else
                                         f"cosine {verdict['min_cosine']:.4f} < {INT8_MIN_COSINE}")
            manifest.update(status="refused", reason=why)
            onnx_path.unlink()
            _note(f"{what}: the ONNX export does not match torch ({why}); refused, running on torch")
        else:
            with torch.no_grad():
                torch_ms = _median_ms(lambda: module(*probe.values()))
            onnx_ms = _median_ms(lambda: tower(**feed))
            from vlens import cpu

            manifest["timing"] = {"torch_ms": round(torch_ms, 3), "onnx_ms": round(onnx_ms, 3), "runs": TIMED_RUNS,
                                  "threads": cpu.plan().threads,
                                  "probe_batch": int(next(iter(probe.values())).shape[0])}
            manifest["choice"] = "onnx" if onnx_ms < torch_ms else "torch"
        manifest["export_seconds"] = round(time.perf_counter() - t0, 2)
        found_folder = finish(tmp, final, manifest)
    except Exception as exc:  # noqa: BLE001 - an exporter failure is a refusal with one line, never a crash
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        why = f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}"
        _note(f"{what}: ONNX export failed ({why}); running on torch")
        return Found("refused", final, {**manifest, "status": "refused", "reason": why}, why)
    if manifest["status"] == "ok":
        t = manifest["timing"]
        diff = manifest["verify"]["max_abs_diff"]
        _note(f"exported {what} in {manifest['export_seconds']:.1f} s: max diff {diff:.1e}, torch "
              f"{t['torch_ms']:.1f} ms vs ONNX Runtime {t['onnx_ms']:.1f} ms per probe batch (auto uses "
              f"{manifest['choice']})")
    return lookup(eid) if found_folder else Found("refused", final, manifest, manifest.get("reason", ""))

