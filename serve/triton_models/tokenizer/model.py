"""Triton python model: TEXT (bytes) -> input_ids, token_type_ids (int64).

Fast WordPiece from the export's tokenizer.json (HF `tokenizers`, Rust). Every request
in one execute() call is tokenized in a single encode_batch and padded once, to the
longest sentence of that formed batch (optionally rounded up to a multiple, so that a
downstream batcher that needs equal shapes can merge requests). Truncates to
max_seq_length. Empty or whitespace-only text is rejected per request.
"""
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backend_utils import param as _param, request_error as _error  # noqa: E402  (copied next to this file)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = Path(args["model_repository"]) / args["model_version"]
        self.max_seq_length = int(_param(config, "max_seq_length"))
        self.pad_id = int(_param(config, "pad_token_id", "0"))
        # Tokens never span more than this many characters in sane text; cutting longer
        # input before tokenizing bounds the work a huge request can cause.
        self.max_chars = 100 * self.max_seq_length
        tok = Tokenizer.from_file(str(here / _param(config, "tokenizer_file")))
        if tok.post_processor is None:
            raise pb_utils.TritonModelException(
                "tokenizer.json has no post-processor: [CLS]/[SEP] would be missing")
        pad_token = tok.id_to_token(self.pad_id)
        if pad_token is None:
            raise pb_utils.TritonModelException(f"pad_token_id {self.pad_id} is not in the vocabulary")
        tok.enable_truncation(max_length=self.max_seq_length)
        multiple = int(_param(config, "pad_to_multiple_of", "0")) or None
        tok.enable_padding(pad_id=self.pad_id, pad_token=pad_token, pad_to_multiple_of=multiple)
        self.tokenizer = tok

    def _texts(self, request):
        """Decoded texts of one request, or an error message."""
        tensor = pb_utils.get_input_tensor_by_name(request, "TEXT")
        if tensor is None:
            return "missing input TEXT"
        raw = tensor.as_numpy()
        if raw.ndim != 2 or raw.shape[1] != 1:
            return f"TEXT must have shape [batch, 1], got {list(raw.shape)}"
        texts = []
        for i, item in enumerate(raw.reshape(-1)):
            # Bytes that are not valid UTF-8 become U+FFFD instead of failing the request.
            text = item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
            if not text.strip():
                return f"TEXT[{i}] is empty or whitespace only: nothing to classify"
            texts.append(text[: self.max_chars])
        return texts

    def execute(self, requests):
        parsed = [self._texts(r) for r in requests]
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
