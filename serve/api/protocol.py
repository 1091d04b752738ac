"""Request schemas (pydantic) for the OpenAI-compatible endpoints, and their mapping to SamplingParams.

Unknown fields are ignored, as OpenAI's API does. Value checks live in SamplingParams, so every
backend and every endpoint agrees on what is valid.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serve.api.errors import APIError, invalid
from serve.api.protocol_tools import ResponseFormat, StructuredOutputs, TextFormat, Tool, ToolChoice
from serve.api.structured_request import (
    Constraint,
    from_response_format,
    from_structured_outputs,
    one_constraint,
)
from serve.api.tool_spec import ToolPlan, can_shape_answer, plan_tools
from serve.sampling_params import ParamError, SamplingParams
from serve.structured.spec import StructuredSpec

# Request fields that constrain the output; forwarded unchanged to a backend whose upstream decodes.
UPSTREAM_FIELDS = ("response_format", "structured_outputs", "tools", "tool_choice", "parallel_tool_calls")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    n: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    priority: int = 0
    num_speculative_tokens: int | None = None  # native engine: 0 = no speculation for this request
    structured_outputs: StructuredOutputs | None = None  # vLLM's extra body field

    def constraint(self) -> Constraint | None:
        return from_structured_outputs(self.structured_outputs)

    def _params(self, max_tokens: int | None, logprobs: int | None,
                structured: StructuredSpec | None = None) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        try:
            bias = {int(k): float(v) for k, v in (self.logit_bias or {}).items()}
        except ValueError as e:
            raise invalid("logit_bias keys must be token ids (integers as strings)", "logit_bias") from e
        try:
            return SamplingParams(
                n=self.n, max_tokens=max_tokens,
                temperature=1.0 if self.temperature is None else self.temperature,
                top_p=1.0 if self.top_p is None else self.top_p,
                top_k=self.top_k or 0, min_p=self.min_p or 0.0,
                presence_penalty=self.presence_penalty or 0.0,
                frequency_penalty=self.frequency_penalty or 0.0,
                repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
                seed=self.seed, stop=stop, stop_token_ids=tuple(self.stop_token_ids or ()),
                ignore_eos=self.ignore_eos, logprobs=logprobs, logit_bias=bias,
                echo=bool(getattr(self, "echo", False)), num_speculative_tokens=self.num_speculative_tokens,
                structured=structured,
            )
        except ParamError as e:
            raise invalid(str(e), e.param) from e

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    # Names of request fields that are set to a non-default value (for per-backend support checks).
    def set_fields(self) -> set[str]:
        return {k for k in self.model_fields_set if getattr(self, k) not in (None, False, 0, [], {})}


class ContentPart(BaseModel):
    """One part of a message's content. Only text parts can be served; others parse (so that the
    answer is a 400 naming `messages`, not a schema error) and are refused in `flat`."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None

    def flat(self) -> dict[str, Any]:
        """The message with list-of-parts content joined to text (only text parts are supported)."""
        content = self.content
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.type != "text" or part.text is None:
                    raise invalid("only text content parts are supported", "messages")
                texts.append(part.text)
            content = "".join(texts)
        return {**(self.model_extra or {}), "role": self.role, "content": content or ""}


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    def tool_plan(self) -> ToolPlan | None:
        return plan_tools(self.tools, self.tool_choice, self.parallel_tool_calls)

    def constraint(self) -> Constraint | None:
        """The one output constraint: response_format, structured_outputs, or the tools' call grammar."""
        plan = self.tool_plan()
        answer = one_constraint(from_response_format(self.response_format), super().constraint())
        if plan and plan.mode == "auto" and answer and can_shape_answer(answer[0]):
            return plan.spec(answer[0]), "tools"  # answer in the format, or call a tool
        tools = (plan.spec(), "tools") if plan else None
        return one_constraint(tools, answer)

    def set_fields(self) -> set[str]:
        """As in _Common, less the no-ops every backend honours: response_format "text", tool_choice
        "none" / "auto", tools offered with tool_choice "none" (accepted, neither rendered nor called), and
        parallel_tool_calls (it only shapes a call that `tools` already names)."""
        names = super().set_fields() - {"parallel_tool_calls"}
        if isinstance(self.response_format, TextFormat):
            names.discard("response_format")
        if self.tool_choice in ("none", "auto"):
            names.discard("tool_choice")
        if self.tool_choice == "none":
            names.discard("tools")
        return names

    def sampling_params(self, structured: StructuredSpec | None = None) -> SamplingParams:
        if self.top_logprobs is not None and not self.logprobs:
            raise invalid("top_logprobs requires logprobs to be true", "top_logprobs")
        k = (self.top_logprobs or 0) if self.logprobs else None
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return self._params(max_tokens, k, structured)


PromptType = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_Common):
    prompt: PromptType
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v: PromptType) -> PromptType:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be an empty list")
        return v

    def sampling_params(self, structured: StructuredSpec | None = None) -> SamplingParams:
        return self._params(self.max_tokens if self.max_tokens is not None else 16, self.logprobs, structured)

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt in the batch: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    tokens: list[int]


def parse(model_cls: type[BaseModel], body: Any) -> Any:
    """Validate a JSON body; a failure is a 400 naming the first bad field, never pydantic's raw shape."""
    try:
        return model_cls.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(x) for x in err.get("loc", ()) if not str(x).startswith("function-")]
        param = loc[0] if loc else None
        where = ".".join(loc) or "body"
        msg = err.get("msg", "invalid value")
        if err.get("type") == "missing":
            msg = "field required"
        raise APIError(400, f"invalid value for '{where}': {msg}", param=param) from e
