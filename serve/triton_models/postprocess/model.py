"""Triton python model: logits -> LABEL (label name) and PROBS (softmax)."""
import json
import sys
from pathlib import Path

import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))
from python_model_io import classify_outputs, label_names, request_error as _error  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.labels = label_names(json.loads(args["model_config"]))

    def _run(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, "logits")
        if tensor is None:
            return "missing input logits"
        result = classify_outputs(tensor.as_numpy(), self.labels)
        if isinstance(result, str):
            return result
        label, probs = result
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("LABEL", label),
                                                          pb_utils.Tensor("PROBS", probs)])

    def execute(self, requests):
        out = []
        for request in requests:
            result = self._run(request)
            out.append(pb_utils.InferenceResponse(error=_error(result)) if isinstance(result, str) else result)
        return out

    def finalize(self):
        pass
