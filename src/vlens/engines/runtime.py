"""Running an export with ONNX Runtime, under vlens's CPU policy; no torch.

:class:`OrtTower` opens ``model.onnx`` once (ONNX Runtime's full graph optimisation) with ``intra_op`` threads
from :func:`vlens.cpu.plan` (``--threads``, ``VLENS_THREADS``, the cores this process may use) and, when the policy
says threads should sleep rather than spin (``OMP_WAIT_POLICY=PASSIVE``, the default on a shared machine), with
ONNX Runtime's spinning off too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def session_options(threads: int | None = None, optimized: bool = False):
    """ONNX Runtime options under vlens's CPU policy. ``optimized``: the file was already optimised at export
    (:func:`optimize`), so the session skips the graph rewrites (they cost ~1 s for a CLIP tower at every start)."""
    import onnxruntime as ort

    from vlens import cpu

    plan = cpu.plan(threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = plan.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if optimized
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    so.log_severity_level = 3  # errors only: its warnings are not the user's business
    if plan.wait_policy.upper() == "PASSIVE":
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def optimize(raw: Path, out: Path) -> None:
    """Write ``raw``'s graph after ONNX Runtime's extended optimisations (fusions of attention, GELU, layer norm;
    no hardware-specific layouts) to ``out``: done once at export, verified there, loaded as is afterwards."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(out)
    so.log_severity_level = 3
    ort.InferenceSession(str(raw), so, providers=["CPUExecutionProvider"])


class OrtTower:
    """One exported tower: ``tower(**inputs)`` with numpy inputs -> its first output as float32 numpy."""

    def __init__(self, path, manifest: dict | None = None, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.manifest = manifest or {}
        opts = session_options(threads, optimized=bool(self.manifest.get("optimized")))
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, **inputs) -> np.ndarray:
        """ONNX Runtime's ``run`` is thread-safe: the server's concurrent requests share one session."""
        feed = {k: np.ascontiguousarray(v) for k, v in inputs.items() if k in self.inputs}
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)
