"""Triton python model: logits -> LABEL (label name) and PROBS (softmax)."""
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backend_utils import request_error as _error  # noqa: E402  (copied next to this file)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        labels = config.get("parameters", {}).get("labels", {}).get("string_value")
        if not labels:
            raise pb_utils.TritonModelException("config.pbtxt lacks parameter 'labels'")
        self.labels = np.array([l.encode("utf-8") for l in json.loads(labels)], dtype=object)

    def _run(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, "logits")
        if tensor is None:
            return "missing input logits"
        logits = tensor.as_numpy()
        if logits.ndim != 2 or logits.shape[1] != len(self.labels):
            return f"logits must have shape [batch, {len(self.labels)}], got {list(logits.shape)}"
        if not np.isfinite(logits).all():
            return "the encoder produced non-finite logits"
        z = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)  # stable softmax
        probs = np.exp(z)
        probs /= probs.sum(axis=1, keepdims=True)
        label = self.labels[probs.argmax(axis=1)].reshape(-1, 1)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("LABEL", label), pb_utils.Tensor("PROBS", probs.astype(np.float32))])

    def execute(self, requests):
        out = []
        for request in requests:
            result = self._run(request)
            out.append(pb_utils.InferenceResponse(error=_error(result)) if isinstance(result, str) else result)
        return out

    def finalize(self):
        pass
