"""OpenAI chat API shapes, as vLLM serves them, so /docs say what the proxy takes and gives.

Every shape allows extra fields: the proxy passes parameters it does not know on to the upstream
untouched, and passes the upstream's answers back the same way.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Open):
    type: str = Field(description="'text' (stored), or 'image_url' (sent upstream with this call, stored as "
                                  "'[image]'); other part types are refused: optimem keeps text turns.")
    text: Optional[str] = None


class ChatMessage(_Open):
    role: str = Field(description="system/developer (passed through, not stored), user, assistant, or a tool.")
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = Field(None, description="A user's name: stored as the turn's speaker.")
    tool_calls: Optional[list[dict[str, Any]]] = None
    tool_call_id: Optional[str] = None


class ChatCompletionRequest(_Open):
    model: str
    messages: list[ChatMessage] = Field(min_length=1, description="As usual; optimem stores the new turns "
                                                                   "and sends its own context instead.")
    stream: Optional[bool] = False
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None
    stop: Union[str, list[str], None] = None
    n: Optional[int] = None
    user: Optional[str] = Field(None, description="Names the optimem session when X-Optimem-Session is absent.")
    tools: Optional[list[dict[str, Any]]] = Field(None, description="The caller's tools: passed through untouched "
                                                                    "(in tool/both memory mode optimem adds "
                                                                    "recall_memory and answers its calls itself).")
    tool_choice: Union[str, dict[str, Any], None] = None
    stream_options: Optional[dict[str, Any]] = None


class AssistantMessage(_Open):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = Field(None, description="Calls of the caller's own tools.")


class Choice(_Open):
    index: int
    message: AssistantMessage
    finish_reason: Optional[str] = None


class Usage(_Open):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class ChatCompletion(_Open):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Optional[Usage] = None


class Model(_Open):
    id: str
    object: Literal["model"] = "model"
    created: Optional[int] = None
    owned_by: Optional[str] = None


class ModelList(_Open):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Union[str, int, None] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_body(message: str, type_: str = "invalid_request_error", code: Any = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}
