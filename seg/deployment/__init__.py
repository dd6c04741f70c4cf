"""Deployment: exported models run by ONNX Runtime and OpenVINO in evaluate.py and predict.py (``backend=``).

Above the engine: the engine runs any model source it is given and never imports a runtime.
"""

from seg.deployment.sources import RuntimeSource, model_source

__all__ = ["RuntimeSource", "model_source"]
