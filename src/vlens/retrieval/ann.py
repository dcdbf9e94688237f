"""Approximate and exact nearest-neighbour search over unit vectors: the FAISS structures the image index uses,
how their search effort is tuned to a recall target, and the brute-force reference they are measured against.

Pure functions over numpy arrays and FAISS objects; no files, no database (those are
:mod:`vlens.retrieval.index_store` and :mod:`vlens.retrieval.index_faiss`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable

import numpy as np


def exact_topk(queries: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], k: int):
    """Brute-force inner-product top-k over streamed chunks: (Q, d) -> scores (Q, k), ids (Q, k), best first.

    Never holds more than one chunk of the collection; used for recall ground truth and as the stale fallback.
    """
    q = np.ascontiguousarray(queries, np.float32)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.full((len(q), 0), -1, np.int64)
    for ids, vecs in chunks:
        s = q @ vecs.T                                                  # (Q, n)
        all_s = np.concatenate([best_s, s], axis=1)                     # (Q, k' + n)
        all_i = np.concatenate([best_i, np.broadcast_to(ids, s.shape)], axis=1)
        kk = min(k, all_s.shape[1])
        top = np.argpartition(-all_s, kk - 1, axis=1)[:, :kk]           # (Q, kk) unordered
        best_s = np.take_along_axis(all_s, top, 1)
        best_i = np.take_along_axis(all_i, top, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    s, i = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
    if s.shape[1] < k:  # fewer vectors than k: pad like FAISS does
        pad = k - s.shape[1]
        s = np.pad(s, ((0, 0), (0, pad)), constant_values=-np.inf)
        i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
    return s, i


def auto_nlist(n: int) -> int:
    """About 4*sqrt(N) lists, but at least 39 training points per list (FAISS's k-means minimum)."""
    return int(max(1, min(round(4 * np.sqrt(max(n, 1))), n // 39)))


VLENS_KINDS = ("flat", "ivf", "hnsw", "ivfpq")


def auto_pq_bytes(dim: int) -> int:
    """PQ code size: about dim/4 bytes (4 dimensions per 8-bit sub-quantizer; 16x smaller than float32), a
    divisor of ``dim`` as PQ requires."""
    want = max(1, dim // 4)
    return max(m for m in range(1, want + 1) if dim % m == 0)


def is_factory(kind: str) -> bool:
    """A FAISS index-factory string such as ``IVF4096,PQ64`` or ``OPQ32,IVF1024,PQ32`` rather than a vlens kind."""
    if kind in VLENS_KINDS:
        return False
    return "," in kind or kind.upper().startswith(("IVF", "HNSW", "PQ", "OPQ", "SQ", "FLAT"))


def needs_training(kind: str) -> bool:
    return kind in ("ivf", "ivfpq") or is_factory(kind)


def faiss_reason(exc: BaseException) -> str:
    """FAISS's C++ error as one readable clause (its messages name source files and template types)."""
    text = " ".join(str(exc).split())
    if "nx >= " in text or "number of clusters" in text or "number of training points" in text.lower():
        return "too few vectors to train its clusters: k-means needs at least one vector per cluster"
    if "d % M == 0" in text:
        return "the PQ size must divide the vector dimension"
    if "PCA matrix cannot output" in text:
        return "a PCA keeps at most as many dimensions as it has training vectors and input dimensions"
    return text.rsplit("Error: ", 1)[-1][:200]


def training_rows(kind: str, n: int, config) -> int:
    """How many stored vectors train ``kind`` for an index of ``n``: all of a small index, a sample of a big one."""
    if not needs_training(kind):
        return 0
    nlist = config.nlist or auto_nlist(n)
    return min(n, max(nlist * 64, 10_000, 256 * 40 if kind != "ivf" else 0))


def check_buildable(kind: str, dim: int, n: int, config, trial_rows: int = 5000) -> None:
    """Raise :class:`ConfigError` if FAISS cannot build ``kind`` for ``n`` vectors of ``dim`` dimensions.

    Called before any image is embedded or any setting is stored, so a setting that cannot work costs nothing and
    never reaches the manifest. What fails is arithmetic (PQ bytes that do not divide the dimension, fewer training
    points than k-means clusters, a PCA wider than its data), not the values of the vectors, so a small index is
    trial-built on random unit vectors of the real count, and a big one (enough points for any cluster count) on a
    sample. A FAISS factory string is tried in a child process (:func:`trial_in_subprocess`): some (``HNSW0``,
    ``HNSW1``) abort or segfault FAISS instead of raising, which must not take vlens down with them.
    """
    from vlens.errors import ConfigError

    if kind == "ivfpq" and config.pq_bytes and dim % config.pq_bytes:
        divisors = [m for m in range(1, min(dim, 256) + 1) if dim % m == 0]
        raise ConfigError(f"--pq-bytes {config.pq_bytes} must divide the vector dimension {dim} (e.g. "
                          f"{', '.join(map(str, divisors[-4:]))}; 0 picks {auto_pq_bytes(dim)})")
    if is_factory(kind):
        why = trial_in_subprocess(kind, dim, n, config, trial_rows)
        if why:
            raise ConfigError(why)
        return
    why = trial_build(kind, dim, n, config, trial_rows)
    if why:
        raise ConfigError(why)


def trial_build(kind: str, dim: int, n: int, config, trial_rows: int = 5000) -> str | None:
    """Build ``kind`` for ``n`` random unit vectors of ``dim`` dimensions (at most ``trial_rows`` of them), add
    them, search and set the search knob, as a real build does; the one-line reason it cannot, or None."""
    rows = training_rows(kind, n, config) if needs_training(kind) else 0
    big = rows > trial_rows
    if big and is_factory(kind):
        import faiss

        from vlens.errors import ConfigError

        try:
            index = make_faiss(kind, dim, n, config, np.zeros((0, dim), np.float32), train_index=False)
        except ConfigError as exc:
            return str(exc)
        try:
            lists = int(faiss.extract_index_ivf(index).nlist)
        except RuntimeError:  # not an IVF index
            lists = 0
        if lists > rows:
            return (f"index kind '{kind}' has {lists} lists but {n} image(s) give {rows} training vectors; use "
                    "fewer lists (IVF<N> with N well under the number of images)")
        if lists > trial_rows:
            return None  # enough real vectors for its k-means, too many to try here
    elif big:
        return None
    m = min(max(rows, min(n, trial_rows), 1), trial_rows)
    x = np.random.default_rng(0).standard_normal((m, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    try:
        index = make_faiss(kind, dim, n, config, x[:rows] if rows else None)
        index.add_with_ids(x, np.arange(m, dtype=np.int64))
        knob = search_knob(index)
        if knob:
            set_search_param(index, kind, 1)
        index.search(x[:4], min(10, m))
    except RuntimeError as exc:
        why = faiss_reason(exc)
        if "PCA" in why or "pre-transform" in why:
            return (f"index kind '{kind}' cannot be built for {n} image(s) of {dim}-d vectors ({why}); use --kind "
                    "flat (exact, fine up to ~1M images), or a smaller transform (PCA<N>/RR<N> with N at most the "
                    "vector dimension and the number of images)")
        return (f"index kind '{kind}' cannot be built for {n} image(s) of {dim}-d vectors ({why}); use --kind "
                "flat (exact, fine up to ~1M images), or an IVF setting with fewer lists (--nlist, or IVF<N> with "
                "N well under the number of images)")
    except Exception as exc:  # noqa: BLE001 - what FAISS's Python layer raises for a structure vlens cannot use
        return (f"index kind '{kind}' cannot be used by vlens ({exc.__class__.__name__}: "
                f"{' '.join(str(exc).split())[:160]}); use --kind flat, ivf, hnsw or ivfpq")
    return None


def trial_in_subprocess(kind: str, dim: int, n: int, config, trial_rows: int = 5000, timeout: float = 120) -> \
        str | None:
    """:func:`trial_build` in a child Python process: the reason ``kind`` cannot be built, or None. A child killed
    by a signal (FAISS aborts on some failed assertions and segfaults on others) is a reason too, so a bad factory
    string is refused in one line instead of killing vlens (or a web server) with it."""
    import json
    import signal
    import subprocess

    import vlens

    args = json.dumps({"kind": kind, "dim": int(dim), "n": int(n), "trial_rows": int(trial_rows),
                       "config": {k: getattr(config, k) for k in ("nlist", "hnsw_m", "pq_bytes")}})
    env = dict(os.environ)
    src = str(os.path.dirname(os.path.dirname(os.path.abspath(vlens.__file__))))
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    code = "import sys; from vlens.retrieval.ann import _trial_child; _trial_child(sys.argv[1])"
    try:
        r = subprocess.run([sys.executable, "-c", code, args], capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return (f"index kind '{kind}' did not finish a trial build on {trial_rows} random vectors in {timeout:g} s; "
                "use --kind flat, ivf, hnsw or ivfpq")
    out = r.stdout.decode(errors="replace").strip().splitlines()
    if r.returncode == 0 and out:
        answer = json.loads(out[-1])
        return answer.get("error")
    if r.returncode < 0:
        how = signal.Signals(-r.returncode).name
    else:
        how = f"exit status {r.returncode}"
    detail = " ".join(r.stderr.decode(errors="replace").split())
    if "assertion" in detail:
        detail = "assertion " + detail.split("assertion", 1)[1].split(" failed")[0].strip() + " failed"
    detail = f": {detail[-160:]}" if detail else ""
    return (f"FAISS crashed ({how}{detail}) on a trial build of index kind '{kind}' for {dim}-d vectors; nothing "
            "was written. Use --kind flat, ivf, hnsw or ivfpq, or another factory string (e.g. HNSW32, IVF256,PQ16)")


def _trial_child(args: str) -> None:
    """The child of :func:`trial_in_subprocess`: one JSON line ``{"error": reason or null}`` on stdout."""
    import json
    from types import SimpleNamespace

    a = json.loads(args)
    why = trial_build(a["kind"], a["dim"], a["n"], SimpleNamespace(**a["config"]), a["trial_rows"])
    sys.stdout.write(json.dumps({"error": why}) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def faiss_output(lines: list[str] | None = None):
    """Catch what FAISS's C++ code prints on the process's stderr (k-means warnings such as "clustering 40 points
    to 16 centroids: please provide at least 624 training points") into ``lines`` (None: dropped), so vlens can
    say it once in its own words instead of FAISS printing it raw at every training."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if lines is not None:
                sink.seek(0)
                lines += [ln.strip() for ln in sink.read().decode(errors="replace").splitlines() if ln.strip()]


def faiss_notes(lines: list[str]) -> list[str]:
    """FAISS's training messages, each distinct one once, as vlens notes."""
    import re

    out = []
    for ln in lines:
        ln = re.sub(r"^WARNING\s*", "", ln)
        m = re.match(r"clustering (\d+) points to (\d+) centroids: please provide at least (\d+)", ln)
        if m:
            ln = (f"FAISS trained {m.group(2)} clusters on only {m.group(1)} vectors (it advises at least "
                  f"{m.group(3)}); search quality is measured below, and a collection this small is exact and "
                  "fast with --kind flat")
        if ln not in out:
            out.append(ln)
    return out


def make_faiss(kind: str, dim: int, n: int, config, train: np.ndarray | None = None, train_index: bool = True,
               messages: list[str] | None = None):
    """An empty FAISS index with ids (inner product on unit vectors = cosine similarity).

    ``config``: anything with ``nlist`` (IVF lists, 0 = auto), ``hnsw_m`` and ``pq_bytes`` (0 = auto) (an
    :class:`IndexConfig`). ``kind``: flat, ivf, hnsw, ivfpq, or a FAISS factory string (trained on ``train``).
    What FAISS prints while training goes into ``messages`` (None: dropped; see :func:`faiss_notes`).
    """
    import faiss

    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        h = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        h.hnsw.efConstruction = max(40, 2 * config.hnsw_m)
        return faiss.IndexIDMap2(h)
    train = np.ascontiguousarray(train if train is not None and len(train) else np.zeros((1, dim), np.float32))
    if is_factory(kind):
        try:
            index = faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            from vlens.errors import ConfigError

            msg = str(exc).strip().splitlines()[-1][:200]
            raise ConfigError(f"FAISS cannot build '{kind}' for {dim}-d vectors ({msg}); see the FAISS wiki "
                              "'The index factory', e.g. IVF1024,PQ32") from None
        if not index.is_trained and train_index:
            with faiss_output(messages):
                index.train(train)
        if isinstance(faiss.downcast_index(index), faiss.IndexIVF):
            return index  # IVF indexes keep ids themselves
        return faiss.IndexIDMap2(index)
    nlist = config.nlist or auto_nlist(n)
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivfpq":
        m = config.pq_bytes or auto_pq_bytes(dim)
        if dim % m:
            from vlens.errors import ConfigError

            raise ConfigError(f"--pq-bytes {m} must divide the vector dimension {dim}")
        nbits = int(min(8, max(1, np.floor(np.log2(max(len(train), 2))))))  # 256 codes need >= 256 points
        ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    else:
        ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.own_fields = True
    quantizer.this.disown()
    with faiss_output(messages):
        ivf.train(train if len(train) >= nlist else np.zeros((nlist, dim), np.float32))
    if kind != "ivfpq":
        return ivf
    # PQ codes alone rank close neighbours poorly (recall@10 ~0.4-0.7 on clustered data, measured), so the
    # k_factor * k best PQ candidates are re-ranked with the exact vectors. Those live in the same file; opened
    # memory-mapped (ImageIndex mmap) only the pages of the candidates are read, RAM holds the PQ codes.
    refine = faiss.IndexRefineFlat(ivf)
    refine.own_fields = True
    ivf.this.disown()
    return faiss.IndexIDMap2(refine)


def _unwrap(index):
    """The index under IndexIDMap / IndexIDMap2 wrappers, downcast to its real class."""
    import faiss

    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        index = faiss.downcast_index(index.index)
    return index


def search_knob(index) -> str | None:
    """The parameter that trades search time for recall: ``nprobe`` (IVF), ``efSearch`` (HNSW), either one plus
    ``k_factor`` (re-ranked: nprobe and k_factor raised together), None (exact)."""
    import faiss

    top = _unwrap(index)
    refine = isinstance(top, faiss.IndexRefine)
    base = _unwrap(top.base_index) if refine else top
    if isinstance(base, faiss.IndexPreTransform):
        base = _unwrap(base.index)
    knob = "nprobe" if isinstance(base, faiss.IndexIVF) else "efSearch" if hasattr(base, "hnsw") else None
    if refine:
        return f"{knob},k_factor" if knob else "k_factor"
    return knob


def set_search_param(index, kind: str, value: int) -> None:
    """Set the index's search knob(s) to ``value`` (the FAISS object, not ``kind``, says which knob it has)."""
    import faiss

    ps = faiss.ParameterSpace()
    for name in (search_knob(index) or "").split(","):
        if name:
            ps.set_index_parameter(index, "k_factor_rf" if name == "k_factor" else name, int(value))


def drop_self(ids: np.ndarray, own: np.ndarray | None, k: int) -> np.ndarray:
    """(Q, k+1) result ids -> (Q, k) without each query's own id (leave-one-out), keeping the order."""
    if own is None:
        return ids[:, :k]
    keep = ids != own[:, None]                                            # (Q, k+1)
    keep &= np.cumsum(keep, axis=1) <= k                                  # at most k per row
    out = np.full((len(ids), k), -1, np.int64)
    rows, cols = np.nonzero(keep)
    pos = np.cumsum(keep, axis=1)[rows, cols] - 1
    out[rows, pos] = ids[rows, cols]
    return out


def tune(index, kind: str, queries: np.ndarray, truth_ids: np.ndarray, target: float, k: int = 10,
         limit: int | None = None, own: np.ndarray | None = None,
         margin_steps: int = 1) -> tuple[int | None, float, list[dict]]:
    """Raise nprobe / efSearch until recall@k against ``truth_ids`` (Q, k) reaches ``target``.

    ``own``: when the queries are stored vectors, their ids; each is dropped from its own results so that the
    estimate holds for new queries (a stored vector trivially finds itself). Even so, stored vectors sit in the
    structure and are easier than new queries (measured: 0.95 estimated vs 0.92-0.95 on held-out queries), so
    ``margin_steps`` more doublings are taken after the target is reached. Returns (chosen value, its recall,
    the whole curve). Recall@k = |ANN top-k ∩ exact top-k| / k, averaged over the queries.
    """
    import faiss

    knob = search_knob(index)
    if knob is None:
        return None, 1.0, []
    if knob.startswith("efSearch"):
        values = [16, 32, 64, 128, 256, 512, 1024]
    else:
        values = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    if knob.startswith("nprobe"):
        nlist = faiss.extract_index_ivf(index).nlist
        values = [v for v in values if v <= max(nlist, 64 if "k_factor" in knob else 0)] or [nlist]
    if limit:
        values = [v for v in values if v <= limit]
    curve, chosen, extra = [], None, margin_steps
    for v in values:
        set_search_param(index, kind, v)
        t0 = time.perf_counter()
        _, ids = index.search(queries, k + (own is not None))
        ms = (time.perf_counter() - t0) * 1000 / max(len(queries), 1)
        rec = recall_at_k(drop_self(ids, own, k), truth_ids)
        curve.append({"param": v, "recall_at_10": round(rec, 4), "ms_per_query": round(ms, 3)})
        if rec >= target:
            chosen = (v, rec)
            if extra == 0:
                break
            extra -= 1
    if chosen is None:
        chosen = (curve[-1]["param"], curve[-1]["recall_at_10"])
    set_search_param(index, kind, chosen[0])
    return chosen[0], float(chosen[1]), curve


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found_i ∩ truth_i| / |truth_i| (ids; -1 padding ignored)."""
    hits = []
    for f, t in zip(found, truth):
        t = {int(x) for x in t if x >= 0}
        if t:
            hits.append(len(t & {int(x) for x in f if x >= 0}) / len(t))
    return float(np.mean(hits)) if hits else 1.0
