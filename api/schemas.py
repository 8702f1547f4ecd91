"""Request and response shapes, so the OpenAPI docs say exactly what the API takes and gives."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator
from pydantic_core import PydanticCustomError

from optimem.memory.service import SESSION_CHARS
from optimem.memory.turns import lone_surrogate

CURVE_DOC = ("A preset name (default, keep, gentle, exponential, aggressive, power, daily) or a curve "
             "object: {kind: step, unit: turns|seconds, steps: [[age, tier], ...]}, "
             "{kind: exponential, unit, half_life} or {kind: power, unit, scale, exponent}.")
# SESSION_CHARS, less "." and ".." (a path segment that means "here" or "up" to every URL library):
# a first character that is not a dot, or a dot and then one, or two dots and then anything.
SESSION_ID = r"^(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,126}|\.\.[A-Za-z0-9._-]{1,126})$"
# At least one character that is neither whitespace (Python's str.strip) nor invisible: zero-width
# spaces and joiners, word joiner and invisible operators, direction marks, soft hyphen, BOM.
NOT_BLANK = r"[^\s\x1c-\x1f\u00ad\u180e\u200b-\u200f\u2060-\u2064\ufeff]"
TIME_IN = ("ISO 8601 date-time, e.g. 2024-05-01T12:30:00Z; without an offset it is UTC, a date alone its "
           "midnight; years 1-9999 in UTC.")
CURVE = Union[str, dict[str, Any], None]
# A route's ``responses=`` for FastAPI: status -> OpenAPI response fields (model, content, description).
Responses = dict[Union[int, str], dict[str, Any]]


class _Strict(BaseModel):
    """Unknown fields refused; text refused when it holds a lone UTF-16 surrogate (not valid Unicode)."""
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        at = lone_surrogate(value) if isinstance(value, str) else None
        if at is not None:
            raise PydanticCustomError("lone_surrogate", "has a lone surrogate at character {at}", {"at": at})
        return value


class SessionCreate(_Strict):
    id: Optional[str] = Field(None, description="Session id (letters, digits, . _ -); generated if absent.",
                              pattern=SESSION_ID)
    curve: CURVE = Field(None, description=CURVE_DOC)
    keep_source: StrictBool = Field(True, description="Keep the exact text of sealed turns. False forgets "
                                                      "for real: only the page images remain.")


class SessionList(BaseModel):
    sessions: list[str]


class TurnIn(_Strict):
    model_config = ConfigDict(extra="ignore")  # as Memory.append: other keys of a turn are not read
    role: str = Field(description="user, assistant, system, or any speaker name.", examples=["user"],
                      max_length=64, pattern=NOT_BLANK)
    content: str = Field(description="The turn's text.", pattern=NOT_BLANK)
    time: Optional[str] = Field(None, description=f"{TIME_IN} The arrival time if absent.", max_length=64)


class TurnsIn(_Strict):
    turns: list[TurnIn] = Field(description="Turns in order.", min_length=1, max_length=1000)


class RecallIn(_Strict):
    query: Optional[str] = Field(None, description="What to look for, in words: ranked by BM25 over the text "
                                                   "the session still holds (source text, or what faded pages "
                                                   "read back); unknown words match close known ones.",
                                 max_length=10_000, pattern=NOT_BLANK)
    turn: Union[StrictInt, Literal["first", "last"], None] = Field(
        None, description="A turn index, 'first' or 'last'.")
    since: Optional[str] = Field(None, description=f"Only turns at or after this time. {TIME_IN}", max_length=64)
    until: Optional[str] = Field(None, description=f"Only turns at or before this time. {TIME_IN}", max_length=64)
    role: Optional[str] = Field(None, description="Only turns of this speaker (e.g. 'user' for 'what did I say').",
                                max_length=64)
    limit: StrictInt = Field(5, ge=1, le=100)


class CurveIn(_Strict):
    curve: Union[str, dict[str, Any]] = Field(description=CURVE_DOC)


class Health(BaseModel):
    status: str
    backend: str
    family: str
    jobs_backlog: Optional[int] = Field(None, description="Jobs waiting for the worker, all tenants together. "
                                                          "Left out when API keys are set and the caller "
                                                          "sends no valid key.")


class FieldError(BaseModel):
    loc: list[Union[str, int]] = Field(description="Where: 'body', 'query', 'path' or 'header', then the field.")
    msg: str
    type: str


class Problem(BaseModel):
    """Every error of the JSON API (401, 404, 409, 422): ``detail`` says what is wrong and what to fix.
    A request the schema refuses also lists each problem in ``errors``."""
    detail: str
    errors: Optional[list[FieldError]] = None
