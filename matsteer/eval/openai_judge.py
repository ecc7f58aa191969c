"""A judge behind any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp's server, Ollama...), through the
``openai`` package (the ``judge`` extra). The API key is read from the environment at each call and is never
stored, logged, shown in ``repr`` or put into an exception message."""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from matsteer.errors import ConfigError
from matsteer.eval.judge_prompts import SYSTEM_PROMPT, judge_prompt, parse_scores
from matsteer.eval.judges import Judge, JudgeError, check_attributes, check_scale

__all__ = ["OpenAICompatibleJudge"]


class _Retryable(Exception):
    """Internal: a failure worth another attempt (429, 5xx, timeout, connection error, bad reply)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _safe_url(url: str) -> str:
    """``url`` without any ``user:password@`` part."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _openai_module() -> Any:
    """The ``openai`` package, or a :class:`ConfigError` saying which extra installs it."""
    try:
        import openai
    except ImportError as exc:
        raise ConfigError(
            "The OpenAI-compatible judge needs the openai package: pip install 'matsteer[judge]' (or pip install openai)."
        ) from exc
    return openai


def _check_endpoint(base_url: str, timeout: float, max_retries: int, backoff: float, max_backoff: float) -> None:
    """A :class:`ConfigError` for a base URL that is not http(s) or holds credentials, or a bad retry setting."""
    parts = urllib.parse.urlsplit(str(base_url))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"base_url must be an http(s) URL such as https://api.openai.com/v1, got {_safe_url(str(base_url))!r}."
        )
    if parts.username or parts.password:
        raise ConfigError(
            "base_url must not contain credentials; put the key in the environment (api_key_env)."
        )
    if not timeout or timeout <= 0:
        raise ConfigError(f"timeout must be positive seconds, got {timeout!r}.")
    if isinstance(max_retries, bool) or int(max_retries) != max_retries or max_retries < 0:
        raise ConfigError(f"max_retries must be a non-negative integer, got {max_retries!r}.")
    if backoff < 0 or max_backoff < 0:
        raise ConfigError("backoff and max_backoff must be non-negative.")


class OpenAICompatibleJudge(Judge):
    """A judge behind an OpenAI-compatible chat-completions endpoint, called through the ``openai`` package.

    Any server that speaks the OpenAI API works (OpenAI, vLLM, llama.cpp's server, Ollama...): ``base_url`` is
    the API root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``. Needs the ``judge`` extra
    (``pip install 'matsteer[judge]'``).

    The key is read from the environment variable ``api_key_env`` at each call (``None``: send no key, e.g. for
    a local server); it is never stored on the judge, logged, shown in ``repr`` or put into an exception message
    (servers sometimes echo it back; such text is scrubbed). Each attempt has a ``timeout`` in seconds. HTTP 429,
    5xx, timeouts, connection errors and replies without usable scores are retried up to ``max_retries`` times,
    sleeping ``min(max_backoff, backoff · 2^attempt)`` (or the server's ``Retry-After``, capped likewise)
    between attempts; other HTTP errors (400, 401, 404...) fail at once. The retries are ours (the client's own
    are turned off) so that one policy, with an injectable ``sleep``, covers bad replies too. Defaults:
    temperature 0, 256 new tokens, scale 0-4 (HelpSteer's). ``json_mode`` adds
    ``response_format={"type": "json_object"}`` for servers that support it.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 30,
        max_retries: int = 3,
        *,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        temperature: float = 0.0,
        max_tokens: int = 256,
        scale: tuple[float, float] = (0, 4),
        json_mode: bool = False,
        descriptions: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        _check_endpoint(base_url, timeout, max_retries, backoff, max_backoff)
        self.base_url = str(base_url).rstrip("/")
        self.model = str(model)
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.scale = check_scale(scale)
        self.json_mode = bool(json_mode)
        self.descriptions = dict(descriptions or {})
        self.name = self.model
        self._sleep = sleep

    def __repr__(self) -> str:
        return (
            f"OpenAICompatibleJudge(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, timeout={self.timeout:g}, max_retries={self.max_retries})"
        )

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def _key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise ConfigError(
                f"the judge's API key is not set: export {self.api_key_env}=... (or pass api_key_env=None for a keyless server)."
            )
        return key

    def _request(self, prompt: str, response: str, attributes: Sequence[str]) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` for one rating."""
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {
                    "role": "user",
                    "content": judge_prompt(prompt, response, attributes, self.scale, self.descriptions),
                },
            ],
            "temperature": self.temperature,
            # max_tokens, not max_completion_tokens: the name every OpenAI-compatible local server accepts.
            "max_tokens": self.max_tokens,
        }
        if self.json_mode:
            request["response_format"] = {"type": "json_object"}
        return request

    def _client(self, openai: Any, key: str | None) -> Any:
        """A client for one call: built per call so that the key lives only as long as the request."""
        # A keyless server: the client insists on some key (and would otherwise read OPENAI_API_KEY), so it gets a
        # placeholder, and each request omits the Authorization header (see _attempt).
        return openai.OpenAI(api_key=key if key is not None else "no-key", base_url=self.base_url,
                             timeout=self.timeout, max_retries=0)

    def _attempt(self, request: Mapping[str, Any], key: str | None, attributes: Sequence[str]) -> dict[str, float]:
        openai = _openai_module()
        failure: Exception | None = None
        headers = {} if key is not None else {"Authorization": openai.Omit()}
        with self._client(openai, key) as client:
            try:
                completion = client.chat.completions.create(**request, extra_headers=headers)
            except openai.APIStatusError as exc:
                failure = self._status_failure(exc, key)
            except openai.APITimeoutError as exc:  # before APIConnectionError: it is a subclass
                failure = _Retryable(f"timed out after {self.timeout:g} s ({type(exc).__name__})")
            except openai.APIConnectionError as exc:
                failure = _Retryable(_scrub(f"cannot reach {_safe_url(self.url)}: {exc}", key))
            except (openai.APIResponseValidationError, ValueError) as exc:  # a body that is not JSON
                failure = _Retryable(_scrub(f"not an OpenAI chat completion ({type(exc).__name__}: {exc})"[:300], key))
        # Raised here, outside the except blocks, so the client's exception (whose text may quote the key) is not
        # chained as __context__.
        if failure is not None:
            raise failure
        try:
            content = completion.choices[0].message.content
        except (AttributeError, IndexError, TypeError):  # JSON, but not a chat completion
            content = None
        if not isinstance(content, str):
            raise _Retryable(f"the reply has no text content (got {type(content).__name__})")
        try:
            return parse_scores(content, attributes, self.scale)
        except JudgeError as exc:
            message = _scrub(str(exc), key)
        raise _Retryable(message)

    def _status_failure(self, exc: Any, key: str | None) -> Exception:
        """A :class:`_Retryable` for 429 / 5xx, else a :class:`JudgeError`; the server's text scrubbed of the key."""
        status = int(exc.status_code)
        response = getattr(exc, "response", None)
        try:
            detail = response.text if response is not None else str(exc)
        except Exception:  # the body is only a hint for the message; never fail on it
            detail = ""
        retry_after = response.headers.get("Retry-After") if response is not None else None
        message = _scrub(f"HTTP {status} from {_safe_url(self.url)}: {detail.strip()[:300]}", key)
        if status == 429 or 500 <= status < 600:
            return _Retryable(message, _seconds(retry_after))
        return JudgeError(message)

    def score(self, prompt: str, response: str, attributes: Sequence[str]) -> dict[str, float]:
        names = check_attributes(attributes)
        key = self._key()
        request = self._request(prompt, response, names)
        attempts = self.max_retries + 1
        last = ""
        for attempt in range(attempts):
            try:
                return self._attempt(request, key, names)
            except _Retryable as exc:
                last = str(exc)
                retry_after = exc.retry_after
            if attempt + 1 < attempts:
                delay = min(self.max_backoff, self.backoff * 2**attempt)
                if retry_after is not None:
                    delay = min(self.max_backoff, max(delay, retry_after))
                self._sleep(delay)
        raise JudgeError(
            _scrub(f"judge {self.model!r} failed after {attempts} attempt(s); last error: {last}", key)
        )


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: ignore, use our own backoff
        return None


def _scrub(message: str, key: str | None) -> str:
    return message.replace(key, "***") if key else message
