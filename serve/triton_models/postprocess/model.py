"""Triton python model: logits -> LABEL (label name) and PROBS (softmax), or for a
regression model the one output -> SCORE."""
import json
import sys
from pathlib import Path

import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))
from python_model_io import is_regression, label_names, request_error as _error, task_outputs  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.labels = None if is_regression(config) else label_names(config)

    def _run(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, "logits")
        if tensor is None:
            return "missing input logits"
        outputs = task_outputs(tensor.as_numpy(), self.labels)
        return outputs if isinstance(outputs, str) else pb_utils.InferenceResponse(output_tensors=outputs)

    def execute(self, requests):
        out = []
        for request in requests:
            result = self._run(request)
            out.append(pb_utils.InferenceResponse(error=_error(result)) if isinstance(result, str) else result)
        return out

    def finalize(self):
        pass
