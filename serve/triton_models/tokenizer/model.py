"""Triton python model: TEXT (and TEXT_PAIR for a sentence-pair model; bytes) -> input_ids,
token_type_ids (int64; a pair is [CLS] a [SEP] b [SEP] with segment ids 0 and 1).

Fast WordPiece from the export's tokenizer.json (HF `tokenizers`, Rust). Every request
in one execute() call is tokenized in a single encode_batch and padded once, to the
longest sentence of that formed batch (optionally rounded up to a multiple, so that a
downstream batcher that needs equal shapes can merge requests). Truncates to
max_seq_length (pairs longest-first, as the tokenizer compress trained with). Empty or
whitespace-only text, a TEXT_PAIR missing or of another row count, and a request over the
byte limits of config.pbtxt (max_text_bytes, max_request_bytes: checked before any text is
decoded) are rejected per request.
"""
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))
from python_model_io import (is_pair, load_tokenizer, param as _param, request_error as _error,  # noqa: E402
                             request_texts, text_char_limit, text_limits)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = Path(args["model_repository"]) / args["model_version"]
        self.max_seq_length = int(_param(config, "max_seq_length"))
        self.max_chars = text_char_limit(self.max_seq_length)
        self.limits = text_limits(config)
        self.pair = is_pair(config)
        self.tokenizer = load_tokenizer(here / _param(config, "tokenizer_file"), self.max_seq_length,
                                        int(_param(config, "pad_token_id", "0")),
                                        int(_param(config, "pad_to_multiple_of", "0")))

    def execute(self, requests):
        parsed = [request_texts(r, self.max_chars, self.limits, self.pair) for r in requests]
        flat = [t for p in parsed if isinstance(p, list) for t in p]
        encodings = self.tokenizer.encode_batch(flat, add_special_tokens=True) if flat else []
        responses, start = [], 0
        for p in parsed:
            if isinstance(p, str):
                responses.append(pb_utils.InferenceResponse(error=_error(p)))
                continue
            enc = encodings[start:start + len(p)]
            start += len(p)
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            types = np.array([e.type_ids for e in enc], dtype=np.int64)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("token_type_ids", types)]))
        return responses

    def finalize(self):
        self.tokenizer = None
