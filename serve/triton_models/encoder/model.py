"""Triton python model: input_ids, token_type_ids -> logits, on a selectable runtime.

The inputs are declared ragged (allow_ragged_batch), so the dynamic batcher merges
requests of different sequence lengths; execute() pads the formed batch once to its
longest row (the exported graph masks pad positions, so padding does not change any
row's logits) and runs it on the runtime: a packed graph's runner packs the sentences of
all requests into shared rows in one call; other graphs run as length-sorted chunks when
that saves padding (``length_buckets``).
Invalid requests (bad rank, ids outside the vocabulary, too long) get a per-request
error and are left out of the batch; the others still run.
"""
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))
from python_model_io import (param as _param, request_error as _error, runner_options,  # noqa: E402
                           string_params)  # (copied next to this file)
from runtimes import check_inputs, run_length_buckets, runner_from_parameters  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = Path(args["model_repository"]) / args["model_version"]
        self.limits = dict(vocab_size=int(_param(config, "vocab_size")),
                           max_seq_length=int(_param(config, "max_seq_length")),
                           type_vocab_size=int(_param(config, "type_vocab_size", "2")))
        self.pad_id = int(_param(config, "pad_token_id", "0"))
        self.length_buckets = max(1, int(_param(config, "length_buckets", "1")))
        kind = _param(config, "runtime")
        try:
            self.run = runner_from_parameters(here, string_params(config), **runner_options(config, args, here))
        except Exception as e:  # surface the reason in the server log and load error
            raise pb_utils.TritonModelException(f"cannot load the {kind} runtime: {e}") from e

    def _inputs(self, request):
        """(input_ids, token_type_ids) of one request, or an error message."""
        arrays = []
        for name in ("input_ids", "token_type_ids"):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                return f"missing input {name}"
            arrays.append(tensor.as_numpy())
        problem = check_inputs(*arrays, **self.limits)
        return problem or tuple(arrays)

    def execute(self, requests):
        parsed = [self._inputs(r) for r in requests]
        good = [p for p in parsed if not isinstance(p, str)]
        logits = None
        if good:
            seq = max(ids.shape[1] for ids, _ in good)
            rows = sum(ids.shape[0] for ids, _ in good)
            ids_all = np.full((rows, seq), self.pad_id, dtype=np.int64)
            types_all = np.zeros((rows, seq), dtype=np.int64)
            row = 0
            for ids, types in good:
                ids_all[row:row + ids.shape[0], :ids.shape[1]] = ids
                types_all[row:row + ids.shape[0], :ids.shape[1]] = types
                row += ids.shape[0]
            try:
                logits = run_length_buckets(self.run, ids_all, types_all, self.length_buckets, self.pad_id)
            except Exception as e:  # a runtime failure fails this batch, not the server
                message = f"encoder runtime failed: {e}"
                return [pb_utils.InferenceResponse(error=_error(p if isinstance(p, str) else message,
                                                                "INTERNAL")) for p in parsed]
        responses, row = [], 0
        for p in parsed:
            if isinstance(p, str):
                responses.append(pb_utils.InferenceResponse(error=_error(p)))
                continue
            n = p[0].shape[0]
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("logits", logits[row:row + n])]))
            row += n
        return responses

    def finalize(self):
        self.run = None
