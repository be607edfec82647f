"""The chat template applied in our own preprocess, instead of Ray's chat-template stage.

Ray's `ChatTemplateStage` is one more actor pool between our preprocess and the engine: every row
is converted to Arrow (or pickled, with an image) once more, shipped to the actor, rendered, and
shipped on. On a 2-core box that actor and its transfers compete with the vLLM engine for the same
cores (bench/teacher_throughput.py measures it). Rendering the prompt where the request is built
costs one `apply_chat_template` call per row and no hop; the engine stage then gets `prompt`.

The rendering is the one Ray's stage does (ray/llm/_internal/batch/stages/chat_template_stage.py,
2.60): the model's `AutoProcessor` (a VLM's tokenizer may lack the template), `tokenize=False`,
a generation prompt since our last message is the user's, the checkpoint's own template.
"""

from __future__ import annotations

import threading
from typing import Any

_PROCESSORS: dict[tuple[str, bool], Any] = {}  # per worker process: (model, trust_remote_code) -> processor
_LOCK = threading.Lock()


def _processor(model: str, trust_remote_code: bool) -> Any:
    """The model's processor, loaded once per worker process (Ray reuses map workers)."""
    key = (model, trust_remote_code)
    with _LOCK:
        if key not in _PROCESSORS:
            from ray.llm._internal.common.utils.download_utils import NodeModelDownloadable, download_model_files
            from transformers import AutoProcessor

            # The same files Ray's stage fetches (a hub id or s3:// source: tokenizer files only).
            mode = (NodeModelDownloadable.EXCLUDE_SAFETENSORS if trust_remote_code
                    else NodeModelDownloadable.TOKENIZER_ONLY)
            path = download_model_files(model_id=model, mirror_config=None, download_model=mode,
                                        download_extra_files=False)
            _PROCESSORS[key] = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        return _PROCESSORS[key]


class ChatPrompt:
    """Picklable: messages -> the prompt string the engine gets. Loads nothing until first called
    (in the Ray worker, not in the driver that builds the plan)."""

    def __init__(self, model: str, trust_remote_code: bool = False) -> None:
        self.model = model
        self.trust_remote_code = bool(trust_remote_code)

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        add_generation_prompt = messages[-1]["role"] == "user"
        return _processor(self.model, self.trust_remote_code).apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt)
