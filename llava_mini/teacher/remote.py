"""Teachers that are language models: any OpenAI-compatible chat-completions server (`OpenAITeacher`), or
a local transformers chat model (`TransformersTeacher`)."""

import os
import random
import threading
import time
from collections import Counter
from contextlib import suppress

from llava_mini.teacher.base import Teacher, TeacherBudgetExhausted, TeacherError, TeacherFatalError

ENV_API_KEY = "LLAVA_MINI_TEACHER_API_KEY"  # the variables OpenAITeacher reads (its docstring says how)
ENV_BASE_URL = "LLAVA_MINI_TEACHER_BASE_URL"
ENV_MODEL = "LLAVA_MINI_TEACHER_MODEL"


def teacher_from_env() -> "OpenAITeacher | None":
    """An OpenAITeacher configured from the environment, or None when neither a key nor a server is set
    (the notebooks then stay offline with the symbolic teacher)."""
    configured = any(os.environ.get(v) for v in (ENV_API_KEY, "OPENAI_API_KEY", ENV_BASE_URL, "OPENAI_BASE_URL"))
    return OpenAITeacher() if configured else None


class OpenAITeacher(Teacher):
    """Any chat-completions server: OpenAI (GPT-4 class), vLLM (`vllm serve <model>`), ollama
    (`http://localhost:11434/v1`), ... Configuration comes from arguments or the environment:

        LLAVA_MINI_TEACHER_API_KEY or OPENAI_API_KEY     the key (local servers accept any; it is never stored)
        LLAVA_MINI_TEACHER_BASE_URL or OPENAI_BASE_URL   e.g. http://localhost:8000/v1 (unset: OpenAI's API)
        LLAVA_MINI_TEACHER_MODEL                         e.g. gpt-4o, Qwen/Qwen2.5-7B-Instruct, llama3.1

    Rate limits (429), server errors (5xx), timeouts, dropped connections and malformed bodies are retried
    with exponential backoff (honouring Retry-After); each is counted in `stats`. `max_requests` caps the
    HTTP requests made, retries included, so a run cannot spend more than you meant to."""

    def __init__(self, model: str | None = None, base_url: str | None = None, api_key: str | None = None,
                 max_requests: int | None = None, max_retries: int = 6, timeout: float = 60.0, backoff: float = 1.0,
                 max_backoff: float = 60.0, temperature: float = 0.2, max_tokens: int = 1024):
        import openai

        self.model = model or os.environ.get(ENV_MODEL)
        if not self.model:
            raise ValueError(f"no model: pass model= or set {ENV_MODEL}")
        base_url = base_url or os.environ.get(ENV_BASE_URL) or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get(ENV_API_KEY) or os.environ.get("OPENAI_API_KEY")
        if not key and base_url is None:
            raise ValueError(f"no API key: set {ENV_API_KEY} or OPENAI_API_KEY (or {ENV_BASE_URL} for a local server)")
        self._secret = key = key or "not-needed"  # vLLM and ollama ignore it; kept only to redact it from errors
        # max_retries=0: the client's own retries would hide failures from our counts and budget.
        self._client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout)
        self.base_url = str(self._client.base_url)
        self.max_requests, self.max_retries, self.backoff = max_requests, max_retries, backoff
        self.max_backoff, self.temperature, self.max_tokens = max_backoff, temperature, max_tokens
        self.stats, self._lock = Counter(), threading.Lock()
        # No server address: the same model elsewhere answers alike (the cache carries over); a URL can hold a token.
        self.identity = f"openai({self.model}, temperature={temperature}, max_tokens={max_tokens})"

    def _count(self, what: str, budgeted: bool = False) -> None:
        with self._lock:
            if budgeted and self.max_requests is not None and self.stats["requests"] >= self.max_requests:
                raise TeacherBudgetExhausted(f"{self.max_requests} requests made")
            self.stats[what] += 1

    def complete(self, messages: list[dict[str, str]]) -> str:
        import openai

        last = "?"
        for attempt in range(self.max_retries + 1):
            self._count("requests", budgeted=True)
            wait = min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)
            try:
                response = self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=self.temperature, max_tokens=self.max_tokens)
                text = None
                with suppress(AttributeError, IndexError, TypeError, KeyError):  # no choices, an HTML page, ...
                    text = response.choices[0].message.content
                if isinstance(text, str):
                    self._count("ok")
                    return text
                last = "malformed"
            except openai.RateLimitError as e:
                last = "rate_limited"
                with suppress(AttributeError, TypeError, ValueError):  # no response, no header, not a number
                    wait = min(self.max_backoff, max(wait, float(e.response.headers.get("retry-after"))))
            except openai.APIStatusError as e:
                if e.status_code < 500 and e.status_code not in (408, 409):  # 400, 401, 404: retrying cannot help
                    self._count("fatal")
                    message = f"HTTP {e.status_code} from {self.base_url}: {e.message}".replace(self._secret, "***")
                    raise TeacherFatalError(message) from None
                last = "server_error"
            except (openai.APIConnectionError, openai.APIResponseValidationError, ValueError) as e:
                last = ("timeout" if isinstance(e, openai.APITimeoutError) else  # (a kind of connection error)
                        "connection_error" if isinstance(e, openai.APIConnectionError) else "malformed")
            self._count(last)
            if attempt < self.max_retries:
                self._count("retries")
                time.sleep(wait)
        self._count("gave_up")
        raise TeacherError(f"{self.model}: no usable response after {self.max_retries + 1} attempts (last: {last})")


class TransformersTeacher(Teacher):
    """A local causal LM with a chat template (e.g. Qwen2.5-7B-Instruct, Llama-3.1-8B-Instruct), by hub
    name or local folder. Greedy by default, so the data is reproducible; `temperature > 0` samples (seeded)."""

    def __init__(self, model_name_or_path: str | os.PathLike, max_new_tokens: int = 768, temperature: float = 0.0,
                 device: str | None = None, dtype="auto", seed: int = 0):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{model_name_or_path}: the tokenizer has no chat template; use an instruct/chat model")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype).to(device).eval()
        self.device, self.max_new_tokens, self.temperature, self.seed = device, max_new_tokens, temperature, seed
        self.identity = (f"transformers({model_name_or_path}, max_new_tokens={max_new_tokens}, "
                         f"temperature={temperature}, seed={seed})")

    def complete(self, messages: list[dict[str, str]]) -> str:
        import torch

        from llava_mini.model import decode, generate_ids  # model imports teacher: import it only here

        prompt = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"][0]
        sample = self.temperature > 0
        if sample:
            torch.manual_seed(self.seed)
        # top_p / top_k None: a model's own generation defaults (Qwen's top_k=20, ...) must not alter the choice.
        [ids] = generate_ids(self.model, self.tokenizer, [prompt], max_new_tokens=self.max_new_tokens, do_sample=sample,
                             temperature=self.temperature if sample else None, top_p=None, top_k=None)
        return decode(self.tokenizer, ids)
