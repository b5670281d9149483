"""A Responses request in chat's terms: input items become chat messages, function tools
chat tools, ``text.format`` a ``response_format``, so the request runs through the chat
door's own checks and generation (gateway.api.chat.serving).

Refusals of what only the Responses API can ask for (built-in tools, background runs,
conversation objects, ...) are made here, before anything else. Refusals the chat path
makes name chat's fields (``messages[3].content``); :func:`renamed_params` turns them back
into the fields of the Responses request the client sent (``input[1].content``).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Iterator

import msgspec

from adapters.limits import BudgetExceeded

from ...errors import InvalidRequest
from ...settings import LimitsSettings
from ..chat import protocol as chat
from .protocol import (
    REFUSED_FIELDS,
    CreateResponseRequest,
    FunctionCallItem,
    FunctionToolChoice,
    InputAudioContent,
    InputFilePart,
    InputImagePart,
    InputItem,
    InputTextPart,
    MessageItem,
    OutputItem,
    OutputTextPart,
    TextFormatJsonObject,
    TextFormatJsonSchema,
    ToolChoiceAllowed,
)

LOGPROBS = "message.output_text.logprobs"
# ``include`` values served: logprobs (honoured), and encrypted reasoning, which asks for
# nothing here (no reasoning items are ever output).
SERVED_INCLUDES = {LOGPROBS, "reasoning.encrypted_content"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(16).hex()}"


# ------------------------------------------------------------------ refusals


def refuse_unserved(request: CreateResponseRequest) -> None:
    """400 for what this gateway cannot do, naming the field."""
    for name, why in REFUSED_FIELDS.items():
        if getattr(request, name) is not None:
            raise InvalidRequest(
                f"'{name}' is not supported: {why}.", param=name, code="unsupported_parameter"
            )
    if request.background:
        raise InvalidRequest(
            "background responses are not supported: send the request without 'background' "
            "(stream it to see it as it is made).",
            param="background",
            code="unsupported_value",
        )
    if request.truncation == "auto":
        raise InvalidRequest(
            "truncation 'auto' is not supported: this gateway does not drop input items to fit "
            "the context window.",
            param="truncation",
            code="unsupported_value",
        )
    for i, value in enumerate(request.include or []):
        if value not in SERVED_INCLUDES:
            raise InvalidRequest(
                f"include value '{value}' is not supported here; supported: {LOGPROBS}.",
                param=f"include[{i}]",
                code="unsupported_value",
            )
    for i, tool in enumerate(request.tools or []):
        if tool.type != "function":
            raise InvalidRequest(
                f"Tool type '{tool.type}' is not supported: this gateway serves function tools "
                "only (no web search, file search, code interpreter, computer use, image "
                "generation, MCP or other built-in tools).",
                param=f"tools[{i}].type",
                code="unsupported_value",
            )
        if tool.name is None:
            raise _missing(f"tools[{i}].name")


def _missing(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


# ------------------------------------------------------------------ items


def input_items(request: CreateResponseRequest) -> list[InputItem]:
    """The request's input as items, each with its type and an id (as input_items lists
    them); a string input is one user message."""
    if isinstance(request.input, str):
        return [_message("user", [InputTextPart(request.input)])]
    items = []
    for item in request.input or []:
        kind = item.type or "message"
        prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}
        items.append(
            _replace(
                item,
                type=kind,
                id=item.id or new_id(prefix.get(kind, "item")),
                status=item.status or "completed",
            )
        )
    return items


def _message(role: str, content: list) -> InputItem:
    return InputItem(
        type="message", id=new_id("msg"), role=role, content=content, status="completed"
    )


def _replace(item: InputItem, **changes) -> InputItem:
    return msgspec.structs.replace(item, **changes)


def output_as_input(item: OutputItem) -> InputItem:
    """An output item of a stored response, as the next request's history sees it."""
    if isinstance(item, MessageItem):
        return InputItem(
            type="message", id=item.id, role="assistant", content=item.content, status=item.status
        )
    assert isinstance(item, FunctionCallItem)
    return InputItem(
        type="function_call",
        id=item.id,
        call_id=item.call_id,
        name=item.name,
        arguments=item.arguments,
        status=item.status,
    )


# ------------------------------------------------------------------ the chat request


def chat_request(
    request: CreateResponseRequest, history: list[InputItem], items: list[InputItem]
) -> tuple[chat.CreateChatCompletionRequest, list[str]]:
    """The chat request, and for each of its messages the Responses field it came from."""
    if not history and not items:
        raise _missing("input")
    messages: list[chat.Message] = []
    origins: list[str] = []
    if request.instructions:
        messages.append(chat.SystemMessage(content=request.instructions))
        origins.append("instructions")
    whole = "input" if isinstance(request.input, str) else None
    for where, item in [("previous_response_id", i) for i in history] + [
        (whole or f"input[{n}]", item) for n, item in enumerate(items)
    ]:
        message = _chat_message(item, where, request.model, messages)
        if message is not None:
            messages.append(message)
            origins.append(where)
    logprobs = LOGPROBS in (request.include or [])
    return (
        chat.CreateChatCompletionRequest(
            model=request.model,
            messages=messages,
            stream=bool(request.stream),
            tools=[_chat_tool(tool) for tool in request.tools or []] or None,
            tool_choice=_chat_tool_choice(request.tool_choice),
            parallel_tool_calls=request.parallel_tool_calls,
            max_completion_tokens=request.max_output_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            response_format=_chat_format(request),
            logprobs=logprobs or None,
            top_logprobs=request.top_logprobs if logprobs else None,
        ),
        origins,
    )


def _chat_message(
    item: InputItem, where: str, model: str, messages: list[chat.Message]
) -> chat.Message | None:
    """``item`` as a chat message; None when it joined the message before it (a function
    call joins the assistant turn that made it)."""
    kind = item.type or "message"
    if kind == "message":
        return _chat_turn(item, where, model)
    if kind == "function_call":
        for field in ("call_id", "name", "arguments"):
            if getattr(item, field) is None:
                raise _missing(f"{where}.{field}")
        call = chat.ToolCallWire(
            id=item.call_id, function=chat.FunctionCall(name=item.name, arguments=item.arguments)
        )
        last = messages[-1] if messages else None
        if isinstance(last, chat.AssistantMessage):
            last.tool_calls = [*(last.tool_calls or []), call]
            return None
        return chat.AssistantMessage(content=None, tool_calls=[call])
    if kind == "function_call_output":
        for field in ("call_id", "output"):
            if getattr(item, field) is None:
                raise _missing(f"{where}.{field}")
        text = _text(item.output, f"{where}.output", model)
        return chat.ToolMessage(content=text, tool_call_id=item.call_id)
    if kind == "item_reference":
        raise InvalidRequest(
            "Item references are not supported: send the item itself, or continue a stored "
            "response with previous_response_id.",
            param=where,
            code="unsupported_value",
        )
    raise InvalidRequest(
        f"Input items of type '{kind}' are not supported: this gateway takes messages, "
        "function_call and function_call_output items.",
        param=f"{where}.type",
        code="unsupported_value",
    )


def _chat_turn(item: InputItem, where: str, model: str) -> chat.Message:
    if item.role is None:
        raise _missing(f"{where}.role")
    if item.content is None:
        raise _missing(f"{where}.content")
    if item.role in ("system", "developer"):
        return chat.SystemMessage(content=_text(item.content, f"{where}.content", model))
    if item.role == "assistant":
        return chat.AssistantMessage(content=_text(item.content, f"{where}.content", model))
    if isinstance(item.content, str):
        return chat.UserMessage(content=item.content)
    parts: list[chat.UserPart] = []
    for j, part in enumerate(item.content):
        _refuse_media(part, f"{where}.content[{j}]", model)
        if isinstance(part, InputAudioContent):
            audio = chat.InputAudio(data=part.input_audio.data, format=part.input_audio.format)
            parts.append(chat.InputAudioPart(input_audio=audio))
        elif isinstance(part, (InputTextPart, OutputTextPart)):
            parts.append(chat.TextPart(part.text))
    if all(isinstance(part, chat.TextPart) for part in parts):
        # Text alone goes as a string, joined as chat joins text parts: a list makes the
        # chat path ask the engine whether it reads audio, for nothing.
        return chat.UserMessage(content="\n".join(p.text for p in parts if p.text))
    return chat.UserMessage(content=parts)


def _text(content, where: str, model: str) -> str:
    """The text of a non-user message or a tool's output (its text parts, joined)."""
    if isinstance(content, str):
        return content
    pieces = []
    for j, part in enumerate(content):
        _refuse_media(part, f"{where}[{j}]", model)
        if isinstance(part, InputAudioContent):
            raise InvalidRequest(
                "input_audio is accepted in user messages only.",
                param=f"{where}[{j}]",
                code="unsupported_content",
            )
        if isinstance(part, (InputTextPart, OutputTextPart)):
            pieces.append(part.text)
    return "".join(pieces)


def _refuse_media(part, where: str, model: str) -> None:
    if isinstance(part, (InputImagePart, InputFilePart)):
        kind = "image" if isinstance(part, InputImagePart) else "file"
        raise InvalidRequest(
            f"The model '{model}' does not accept {kind} input.",
            param=where,
            code="unsupported_content",
        )


def _chat_tool(tool) -> chat.ToolDefinition:
    return chat.ToolDefinition(
        function=chat.FunctionDefinition(
            name=tool.name,
            description=tool.description,
            parameters=tool.parameters,
            strict=tool.strict,
        )
    )


def _chat_tool_choice(choice) -> chat.ToolChoiceWire | None:
    if isinstance(choice, FunctionToolChoice):
        return chat.NamedToolChoice(function=chat.NamedFunction(choice.name))
    if isinstance(choice, ToolChoiceAllowed):
        named = []
        for i, tool in enumerate(choice.tools):
            if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
                raise InvalidRequest(
                    "tool_choice.allowed_tools lists function tools only, as "
                    '{"type": "function", "name": ...}.',
                    param=f"tool_choice.tools[{i}]",
                    code="unsupported_value",
                )
            named.append(chat.NamedToolChoice(function=chat.NamedFunction(tool["name"])))
        return chat.AllowedToolsChoice(
            allowed_tools=chat.AllowedTools(mode=choice.mode, tools=named)
        )
    return choice


def _chat_format(request: CreateResponseRequest):
    fmt = request.text.format if request.text is not None else None
    if isinstance(fmt, TextFormatJsonSchema):
        spec = chat.JsonSchemaSpec(
            name=fmt.name, description=fmt.description, schema=fmt.schema, strict=fmt.strict
        )
        return chat.JsonSchemaFormat(json_schema=spec)
    if isinstance(fmt, TextFormatJsonObject):
        return chat.JsonObjectFormat()
    return None


# ------------------------------------------------------------------ budgets and params


def check_budgets(wire: chat.CreateChatCompletionRequest, limits: LimitsSettings) -> None:
    """The chat request's own budget checks (text lengths, schemas capped into grammars),
    as its JSON body would have had them."""
    try:
        wire.check_input(limits)
    except BudgetExceeded as exc:
        raise InvalidRequest(exc.message, param=exc.param, code=exc.code) from None


_MESSAGE = re.compile(r"messages\[(\d+)\]")
_RENAMED = (
    (re.compile(r"tools\[(\d+)\]\.function\."), r"tools[\1]."),
    (re.compile(r"response_format\.json_schema\."), "text.format."),
    (re.compile(r"response_format"), "text.format"),
    (re.compile(r"max_completion_tokens|max_tokens"), "max_output_tokens"),
    (re.compile(r"^messages$"), "input"),
)
# Origins that are one field, whatever part of the message a chat param names.
_WHOLE = ("input", "instructions", "previous_response_id")


def responses_param(param: str, origins: list[str]) -> str:
    match = _MESSAGE.match(param)
    if match:
        index = int(match.group(1))
        origin = origins[index] if index < len(origins) else "input"
        return origin if origin in _WHOLE else origin + param[match.end() :]
    for pattern, replacement in _RENAMED:
        param = pattern.sub(replacement, param)
    return param


@contextmanager
def renamed_params(origins: list[str]) -> Iterator[None]:
    """Refusals raised inside name the Responses request's fields, in ``param`` and in
    the message that quotes it."""
    try:
        yield
    except InvalidRequest as exc:  # 400s; a model's 404 already names 'model'
        if exc.param:
            renamed = responses_param(exc.param, origins)
            exc.message = exc.message.replace(exc.param, renamed)
            exc.param = renamed
        raise
