"""Request and response shapes, so the OpenAPI docs say exactly what the API takes and gives."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

CURVE_DOC = ("A preset name (default, keep, gentle, exponential, aggressive, power, daily) or a curve "
             "object: {kind: step, unit: turns|seconds, steps: [[age, tier], ...]}, "
             "{kind: exponential, unit, half_life} or {kind: power, unit, scale, exponent}.")


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Optional[str] = Field(None, description="Session id (letters, digits, . _ -); generated if absent.")
    curve: Union[str, dict[str, Any], None] = Field(None, description=CURVE_DOC)
    keep_source: bool = Field(True, description="Keep the exact text of sealed turns. False forgets "
                                                "for real: only the page images remain.")


class SessionList(BaseModel):
    sessions: list[str]


class TurnIn(BaseModel):
    role: str = Field(description="user, assistant, system, or any speaker name.", examples=["user"])
    content: str = Field(description="The turn's text.")
    time: Optional[str] = Field(None, description="ISO 8601; the arrival time if absent.")


class TurnsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    turns: list[TurnIn] = Field(description="Turns in order.", min_length=1)


class RecallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: Optional[str] = Field(None, description="What to look for (fuzzy match on decoded text).")
    turn: Union[int, Literal["first", "last"], None] = Field(None, description="A turn index, 'first' or 'last'.")
    since: Optional[str] = Field(None, description="ISO 8601: only turns at or after this time.")
    until: Optional[str] = Field(None, description="ISO 8601: only turns at or before this time.")
    role: Optional[str] = Field(None, description="Only turns of this speaker (e.g. 'user' for 'what did I say').")
    limit: int = Field(5, ge=1, le=100)


class CurveIn(BaseModel):
    curve: Union[str, dict[str, Any]] = Field(description=CURVE_DOC)


class Health(BaseModel):
    status: str
    backend: str
    family: str
    jobs_backlog: int


class Problem(BaseModel):
    detail: str
