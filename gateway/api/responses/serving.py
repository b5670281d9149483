"""Responses: a request translated into a chat request (translate.py), prepared and run by
the chat door's :class:`~gateway.api.chat.serving.ChatService` (its checks, the key's
policy, the one generation loop), and the turn's events rendered as Responses stream
events or one Response object.

Both renderings come from :class:`OutputBuilder`, which turns each turn event into the
stream events it stands for while it builds the output items; the non-streamed answer
is the same builder with its events dropped. A response made with ``store`` (the
default) is kept in the state backend with its whole conversation, for
``previous_response_id`` and the GET/DELETE routes, under its key's owner.
"""

from __future__ import annotations

import itertools
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import msgspec

from adapters.chat.events import TokenLogprob
from adapters.responses.store import ResponseStore
from engines.chat import Finish, TextDelta, ToolCallArgsDelta, ToolCallEnd, ToolCallStart

from ...errors import APIError, InvalidRequest
from ...policy import Policy
from ...settings import LimitsSettings
from ...streaming import prime
from ..chat.serving import ChatService, Prepared, usage
from .protocol import (
    ContentPartAdded,
    ContentPartDone,
    CreateResponseRequest,
    ErrorEvent,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    FunctionCallItem,
    IncompleteDetails,
    InputItem,
    InputTokensDetails,
    LogProbAlternative,
    MessageItem,
    OutputItem,
    OutputItemAdded,
    OutputItemDone,
    OutputLogProb,
    OutputTextDelta,
    OutputTextDone,
    OutputTextPart,
    OutputTokensDetails,
    ResponseCompleted,
    ResponseCreated,
    ResponseError,
    ResponseFailed,
    ResponseFunctionTool,
    ResponseIncomplete,
    ResponseInProgress,
    ResponseObject,
    ResponseUsage,
    StoredRecord,
    TextConfig,
    TextFormatText,
)
from .translate import (
    chat_request,
    check_budgets,
    input_items,
    new_id,
    output_as_input,
    refuse_unserved,
    renamed_params,
)

_record_decoder = msgspec.json.Decoder(StoredRecord)


@dataclass
class ResponseTurn:
    """A request that passed every check: the chat turn that answers it, and what the
    Response object echoes."""

    request: CreateResponseRequest
    prepared: Prepared
    conversation: list[InputItem]  # every input item, earlier turns' first
    origins: list[str]  # the Responses field each chat message came from
    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def response(self, status: str, output: list[OutputItem], **fields) -> ResponseObject:
        r = self.request
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            status=status,
            instructions=r.instructions,
            max_output_tokens=r.max_output_tokens,
            model=r.model,
            output=output,
            parallel_tool_calls=r.parallel_tool_calls is not False,
            previous_response_id=r.previous_response_id,
            store=r.store is not False,
            temperature=1.0 if r.temperature is None else r.temperature,
            text=TextConfig(format=(r.text and r.text.format) or TextFormatText()),
            tool_choice=r.tool_choice or "auto",
            tools=[
                ResponseFunctionTool(
                    name=t.name, description=t.description, parameters=t.parameters, strict=t.strict
                )
                for t in r.tools or []
            ],
            top_p=1.0 if r.top_p is None else r.top_p,
            top_logprobs=r.top_logprobs or 0,
            metadata=r.metadata or {},
            **fields,
        )


class ResponsesService:
    def __init__(self, chat: ChatService, store: ResponseStore, ttl_seconds: int) -> None:
        self.chat = chat
        self.store = store
        self.ttl_seconds = ttl_seconds

    async def prepare(
        self, request: CreateResponseRequest, policy: Policy, limits: LimitsSettings
    ) -> ResponseTurn:
        """Everything refusable is refused here, before the first byte (as chat does)."""
        refuse_unserved(request)
        history = await self._history(request.previous_response_id, policy.owner)
        items = input_items(request)
        wire, origins = chat_request(request, history, items)
        with renamed_params(origins):
            check_budgets(wire, limits)
            prepared = await self.chat.prepare(wire, policy)
        return ResponseTurn(request, prepared, history + items, origins)

    async def _history(self, previous_id: str | None, owner: str) -> list[InputItem]:
        if previous_id is None:
            return []
        record = await self.record(previous_id, owner)
        if record is None:  # unknown, expired, not stored, or another key's: one answer
            raise InvalidRequest(
                f"Previous response with id '{previous_id}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return record.input + [output_as_input(item) for item in record.response.output]

    async def record(self, response_id: str, owner: str) -> StoredRecord | None:
        stored = await self.store.get(response_id, owner=owner)
        return None if stored is None else _record_decoder.decode(stored.record)

    async def delete(self, response_id: str, owner: str) -> bool:
        return await self.store.delete(response_id, owner=owner)

    async def keep(self, turn: ResponseTurn, response: ResponseObject) -> None:
        if turn.request.store is False:
            return
        record = msgspec.json.encode(StoredRecord(response=response, input=turn.conversation))
        await self.store.put(turn.id, record, self.ttl_seconds, owner=turn.prepared.owner)

    def run(self, turn: ResponseTurn) -> AsyncIterator[object]:
        return self.chat.run(turn.prepared)


# ------------------------------------------------------------------ rendering


class OutputBuilder:
    """Output items built from a turn's events, and the stream events each one makes."""

    def __init__(self, logprobs: bool) -> None:
        self.items: list[OutputItem] = []
        self.finish: Finish | None = None
        self._logprobs = logprobs
        self._sequence = itertools.count()
        self._message: MessageItem | None = None  # the text item being written
        self._text: list[str] = []
        self._tokens: list[OutputLogProb] = []
        self._calls: dict[int, FunctionCallItem] = {}  # open calls by the engine's index

    def next_number(self) -> int:
        return next(self._sequence)

    @property
    def incomplete(self) -> bool:
        return self.finish is not None and self.finish.reason == "length"

    def on(self, event: object) -> list[msgspec.Struct]:
        if isinstance(event, TextDelta):
            return self._text_delta(event)
        if isinstance(event, ToolCallStart):
            return [*self._close_message(), *self._call_start(event)]
        if isinstance(event, ToolCallArgsDelta):
            call = self._calls[event.index]
            call.arguments += event.fragment
            return [
                FunctionCallArgumentsDelta(
                    item_id=call.id,
                    output_index=self._index(call),
                    delta=event.fragment,
                    sequence_number=self.next_number(),
                )
            ]
        if isinstance(event, ToolCallEnd):
            return self._close_call(event.index)
        if isinstance(event, Finish):
            self.finish = event
            return [
                *self._close_message(),
                *(e for i in list(self._calls) for e in self._close_call(i)),
            ]
        return []

    def _index(self, item: OutputItem) -> int:
        return next(i for i, known in enumerate(self.items) if known is item)

    def _status(self) -> str:
        return "incomplete" if self.incomplete else "completed"

    def _text_delta(self, event: TextDelta) -> list[msgspec.Struct]:
        events: list[msgspec.Struct] = []
        if self._message is None:
            self._message = MessageItem(id=new_id("msg"), status="in_progress", content=[])
            self.items.append(self._message)
            events += [
                OutputItemAdded(
                    output_index=len(self.items) - 1,
                    item=MessageItem(id=self._message.id, status="in_progress", content=[]),
                    sequence_number=self.next_number(),
                ),
                ContentPartAdded(
                    item_id=self._message.id,
                    output_index=len(self.items) - 1,
                    content_index=0,
                    part=OutputTextPart(text=""),
                    sequence_number=self.next_number(),
                ),
            ]
        tokens = _logprobs(event.logprobs) if self._logprobs else []
        self._text.append(event.text)
        self._tokens += tokens
        events.append(
            OutputTextDelta(
                item_id=self._message.id,
                output_index=len(self.items) - 1,
                content_index=0,
                delta=event.text,
                logprobs=tokens,
                sequence_number=self.next_number(),
            )
        )
        return events

    def _close_message(self) -> list[msgspec.Struct]:
        message, self._message = self._message, None
        if message is None:
            return []
        part = OutputTextPart(text="".join(self._text), logprobs=self._tokens)
        self._text, self._tokens = [], []
        message.content = [part]
        message.status = self._status()
        where = {"item_id": message.id, "output_index": self._index(message), "content_index": 0}
        return [
            OutputTextDone(
                **where, text=part.text, logprobs=part.logprobs, sequence_number=self.next_number()
            ),
            ContentPartDone(**where, part=part, sequence_number=self.next_number()),
            OutputItemDone(
                output_index=where["output_index"], item=message, sequence_number=self.next_number()
            ),
        ]

    def _call_start(self, event: ToolCallStart) -> list[msgspec.Struct]:
        call = FunctionCallItem(
            id=new_id("fc"), call_id=event.id, name=event.name, arguments="", status="in_progress"
        )
        self._calls[event.index] = call
        self.items.append(call)
        added = msgspec.structs.replace(call)
        return [
            OutputItemAdded(
                output_index=len(self.items) - 1, item=added, sequence_number=self.next_number()
            )
        ]

    def _close_call(self, index: int) -> list[msgspec.Struct]:
        call = self._calls.pop(index, None)
        if call is None:
            return []
        call.status = self._status() if self.finish is not None else "completed"
        output_index = self._index(call)
        return [
            FunctionCallArgumentsDone(
                item_id=call.id,
                name=call.name,
                output_index=output_index,
                arguments=call.arguments,
                sequence_number=self.next_number(),
            ),
            OutputItemDone(
                output_index=output_index, item=call, sequence_number=self.next_number()
            ),
        ]

    def response(self, turn: ResponseTurn) -> ResponseObject:
        """The finished Response: completed, or incomplete when max_output_tokens cut it."""
        assert self.finish is not None
        whole = usage(turn.prepared, self.finish, 0.0)
        fields = {
            "usage": ResponseUsage(
                input_tokens=whole.prompt_tokens,
                input_tokens_details=InputTokensDetails(),
                output_tokens=whole.completion_tokens,
                output_tokens_details=OutputTokensDetails(),
                total_tokens=whole.total_tokens,
            )
        }
        if self.incomplete:
            fields["incomplete_details"] = IncompleteDetails(reason="max_output_tokens")
        else:
            fields["completed_at"] = int(time.time())
        return turn.response(self._status(), self.items, **fields)


def _logprobs(tokens: list[TokenLogprob] | None) -> list[OutputLogProb]:
    return [
        OutputLogProb(
            token=t.token,
            logprob=t.logprob,
            bytes=t.bytes,
            top_logprobs=[
                LogProbAlternative(token=a.token, logprob=a.logprob, bytes=a.bytes) for a in t.top
            ],
        )
        for t in tokens or []
    ]


def _builder(turn: ResponseTurn) -> OutputBuilder:
    return OutputBuilder(turn.prepared.engine_request.logprobs)


async def complete(service: ResponsesService, turn: ResponseTurn) -> ResponseObject:
    builder = _builder(turn)
    with renamed_params(turn.origins):
        async with aclosing(service.run(turn)) as events:
            async for event in events:
                builder.on(event)
    response = builder.response(turn)
    await service.keep(turn, response)
    return response


async def stream(
    service: ResponsesService, turn: ResponseTurn, to_error: Callable[[Exception], APIError]
) -> AsyncIterator[msgspec.Struct]:
    """The Responses event stream. A failure once it has begun ends it with an ``error``
    event and ``response.failed``, never with silence; ``to_error`` gives the failure its
    status and code."""
    builder = _builder(turn)
    source = service.run(turn)
    async with aclosing(source):
        # The first event waits for the engine to take the request: a refusal (a full
        # queue, a model that will not load) still answers with its status, not a 200.
        with renamed_params(turn.origins):
            events = await prime(source)
        started = turn.response("in_progress", [])
        yield ResponseCreated(response=started, sequence_number=builder.next_number())
        yield ResponseInProgress(response=started, sequence_number=builder.next_number())
        try:
            async for event in events:
                for out in builder.on(event):
                    yield out
            response = builder.response(turn)
            await service.keep(turn, response)
        except Exception as exc:  # noqa: BLE001 - any failure must reach the client
            error = to_error(exc)
            yield ErrorEvent(
                code=error.code,
                message=error.message,
                param=error.param,
                sequence_number=builder.next_number(),
            )
            code = "rate_limit_exceeded" if error.status_code == 429 else "server_error"
            failed = turn.response(
                "failed", builder.items, error=ResponseError(code=code, message=error.message)
            )
            yield ResponseFailed(response=failed, sequence_number=builder.next_number())
            return
    done = ResponseIncomplete if builder.incomplete else ResponseCompleted
    yield done(response=response, sequence_number=builder.next_number())
