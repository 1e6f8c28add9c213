"""Triton python model: TEXT (+ TEXT_PAIR for a pair model) -> LABEL, PROBS (or SCORE for a
regression model) in one step (tokenize, encode, softmax).

The same work as the ensemble tokenizer -> encoder -> postprocess, without the two
extra hops between python stubs: the formed batch is tokenized in one encode_batch,
padded once to its longest sentence and run on the encoder's runtime (runtimes.py,
copied next to this file): a packed graph packs the sentences into shared rows, other
graphs run as length-sorted chunks when that saves padding (``length_buckets``). Then
the logits become labels and probabilities. Invalid requests (the tokenizer model's rules,
byte limits included) get a per-request error; the others still run.
"""
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))
from python_model_io import (is_pair, is_regression, label_names, load_tokenizer, param as _param,  # noqa: E402
                             request_error as _error, request_texts, runner_options, string_params,
                             task_outputs, text_char_limit, text_limits)
from runtimes import run_length_buckets, runner_from_parameters  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = Path(args["model_repository"]) / args["model_version"]
        max_seq_length = int(_param(config, "max_seq_length"))
        self.max_chars = text_char_limit(max_seq_length)
        self.limits = text_limits(config)
        self.pad_id = int(_param(config, "pad_token_id", "0"))
        self.tokenizer = load_tokenizer(here / _param(config, "tokenizer_file"), max_seq_length, self.pad_id)
        self.labels = None if is_regression(config) else label_names(config)
        self.pair = is_pair(config)
        self.length_buckets = max(1, int(_param(config, "length_buckets", "1")))
        try:
            self.run = runner_from_parameters(here, string_params(config), **runner_options(config, args, here))
        except Exception as e:  # surface the reason in the server log and load error
            raise pb_utils.TritonModelException(f"cannot load the {_param(config, 'runtime')} runtime: {e}") from e

    def execute(self, requests):
        parsed = [request_texts(r, self.max_chars, self.limits, self.pair) for r in requests]
        flat = [t for p in parsed if isinstance(p, list) for t in p]
        logits = None
        if flat:
            enc = self.tokenizer.encode_batch(flat, add_special_tokens=True)
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            types = np.array([e.type_ids for e in enc], dtype=np.int64)
            try:
                logits = run_length_buckets(self.run, ids, types, self.length_buckets, self.pad_id)
            except Exception as e:  # a runtime failure fails this batch, not the server
                return [pb_utils.InferenceResponse(error=_error(
                    p if isinstance(p, str) else f"encoder runtime failed: {e}", "INTERNAL")) for p in parsed]
        responses, row = [], 0
        for p in parsed:
            if isinstance(p, str):
                responses.append(pb_utils.InferenceResponse(error=_error(p)))
                continue
            result = task_outputs(logits[row:row + len(p)], self.labels)
            row += len(p)
            if isinstance(result, str):
                responses.append(pb_utils.InferenceResponse(error=_error(result, "INTERNAL")))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=result))
        return responses

    def finalize(self):
        self.run = self.tokenizer = None
