"""An OpenAI-compatible chat server the user names (a local vLLM or llama.cpp server, or a hosted one), as a
:class:`~mechscope.explain.types.Writer` and a :class:`~mechscope.explain.types.Judge`. Standard library only.

Nothing here opens a connection until :meth:`Endpoint.write` or :meth:`Endpoint.p_yes` is called, and an
``Endpoint`` exists only when the user gave its URL: mechscope makes no network call of its own.

The protocol used (``POST {url}/v1/chat/completions``, one request per prompt):

- write: ``{"model", "messages": [{"role": "user", "content": prompt}], "max_tokens", "temperature": 0}``; the
  answer is ``choices[0].message.content``.
- p_yes: the same with ``"max_tokens": 1, "logprobs": true, "top_logprobs": 20``; from
  ``choices[0].logprobs.content[0].top_logprobs`` (token, logprob) pairs, P(yes) / (P(yes) + P(no)) where P(yes)
  sums exp(logprob) over the tokens that read "yes" once stripped of spaces and lower-cased (likewise "no"). A
  word absent from the top 20 counts as probability 0; when neither is there the judge did not answer the question
  and the call fails (a score made up from nothing would be silent).
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mechscope.errors import MechscopeError, UsageError

TOP_LOGPROBS = 20
"""Alternatives asked for at the judge's answer token."""


class EndpointError(MechscopeError):
    """The chat endpoint could not be reached, refused the request, or answered outside the protocol."""


def completions_url(url: str) -> str:
    """The chat-completions address of a server given as ``http://host:port`` or ``http://host:port/v1``."""
    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise UsageError(f"`endpoint` {url!r} is not an http(s) URL; give e.g. http://127.0.0.1:8000/v1")
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


class Endpoint:
    """A chat endpoint: ``url`` (``http://host:port`` or ``…/v1``), the served ``model`` name, the API key read
    from the environment variable ``api_key_env`` (none when empty), ``timeout`` seconds per request and up to
    ``concurrency`` requests in flight."""

    def __init__(
        self, url: str, model: str, api_key_env: str = "", timeout: float = 60.0, concurrency: int = 4
    ) -> None:
        if not model:
            raise UsageError("`endpoint_model` is empty; give the model name the server serves")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise UsageError(f"`timeout` must be a positive number of seconds, got {timeout}")
        if concurrency < 1:
            raise UsageError(f"`concurrency` must be ≥ 1, got {concurrency}")
        self.url, self.model, self.timeout, self.concurrency = completions_url(url), model, timeout, concurrency
        self.headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise UsageError(f"`api_key_env` names {api_key_env}, which is not set in the environment")
            self.headers["Authorization"] = f"Bearer {key}"

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(self.url, json.dumps(body).encode(), self.headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode("utf-8", "replace")
            raise EndpointError(f"{self.url} answered HTTP {err.code} {err.reason}: {detail}") from None
        except TimeoutError:
            raise EndpointError(
                f"{self.url} did not answer within {self.timeout:g}s; raise `timeout` or check the server"
            ) from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, TimeoutError):
                raise EndpointError(
                    f"{self.url} did not answer within {self.timeout:g}s; raise `timeout` or check the server"
                ) from None
            raise EndpointError(f"cannot reach {self.url} ({err.reason}); is the server running there?") from None
        try:
            answer = json.loads(raw)
        except ValueError:
            raise EndpointError(
                f"{self.url} answered with something that is not JSON: {raw[:200].decode('utf-8', 'replace')!r}"
            ) from None
        if not isinstance(answer, dict) or not answer.get("choices"):
            raise EndpointError(f"{self.url} answered without `choices` (not an OpenAI chat completion): {raw[:200]!r}")
        return answer["choices"][0]

    def _map(self, fn: Any, prompts: list[str]) -> list[Any]:
        if len(prompts) <= 1 or self.concurrency == 1:
            return [fn(p) for p in prompts]
        with ThreadPoolExecutor(min(self.concurrency, len(prompts))) as pool:
            return list(pool.map(fn, prompts))

    def _messages(self, prompt: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": prompt}]

    def write(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """One answer per prompt (temperature 0)."""

        def one(prompt: str) -> str:
            choice = self._post(
                {
                    "model": self.model,
                    "messages": self._messages(prompt),
                    "max_tokens": max_new_tokens,
                    "temperature": 0,
                }
            )
            content = (choice.get("message") or {}).get("content")
            if not isinstance(content, str):
                raise EndpointError(f"{self.url} answered without choices[0].message.content: {choice!r:.200}")
            return content

        return self._map(one, prompts)

    def p_yes(self, prompts: list[str]) -> list[float]:
        """P(yes) / (P(yes) + P(no)) of the first answer token, per prompt (module docstring)."""

        def one(prompt: str) -> float:
            choice = self._post(
                {
                    "model": self.model,
                    "messages": self._messages(prompt),
                    "max_tokens": 1,
                    "temperature": 0,
                    "logprobs": True,
                    "top_logprobs": TOP_LOGPROBS,
                }
            )
            try:
                top = choice["logprobs"]["content"][0]["top_logprobs"]
                pairs = [(str(t["token"]).strip().lower(), float(t["logprob"])) for t in top]
            except (KeyError, IndexError, TypeError, ValueError):
                raise EndpointError(
                    f"{self.url} gave no choices[0].logprobs.content[0].top_logprobs; the server must support "
                    f"`logprobs` and `top_logprobs` to judge (got {choice!r:.200})"
                ) from None
            yes = sum(math.exp(lp) for t, lp in pairs if t == "yes")
            no = sum(math.exp(lp) for t, lp in pairs if t == "no")
            if yes + no == 0:
                raise EndpointError(
                    f"{self.url}: neither 'yes' nor 'no' is among the {len(pairs)} likeliest first tokens "
                    f"({', '.join(repr(t) for t, _ in pairs[:5])}, …); the model does not answer the question"
                )
            return yes / (yes + no)

        return self._map(one, prompts)
