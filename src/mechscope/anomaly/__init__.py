"""Mechanistic anomaly detection: detectors fitted on trusted inputs, tasks with planted anomalies, AUROC.

``det = make_detector(name, **config)``; ``det.fit(model, trusted, sites)``; ``det.score(inputs)`` →
float64 ``[N]``, higher = more anomalous. Detectors (:data:`REGISTRY`): ``mahalanobis``, ``que``,
``spectral``, ``lof``, ``knn``, ``sae``, ``distill``, ``probe``. Benchmarks (:data:`mechscope.anomaly.benchmarks.BENCHMARKS`):
``backdoor-corner``, ``backdoor-blend``, ``backdoor-lm``, ``ood``. Evaluation: :func:`evaluate`.
"""

from mechscope.anomaly import batch, distill, gaussian, neighbours, probe, sae  # noqa: F401  (registers)
from mechscope.anomaly.base import REGISTRY, Detector, DetectorConfig, collect, make_detector, register
from mechscope.anomaly.benchmarks import BENCHMARKS, Benchmark, load_benchmark
from mechscope.anomaly.evaluate import DetectResult, evaluate

__all__ = [
    "REGISTRY",
    "Detector",
    "DetectorConfig",
    "collect",
    "make_detector",
    "register",
    "DetectResult",
    "evaluate",
    "BENCHMARKS",
    "Benchmark",
    "load_benchmark",
]
