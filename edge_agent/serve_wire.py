"""The OpenAI wire format of ``serve``'s answers: a completion, a stream chunk, usage with the split by side."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from .strict_json import dumps, finite


class StrictJSONResponse(JSONResponse):
    """starlette's JSONResponse refuses a float that is not finite (a 500); here it is null (strict_json)."""

    def render(self, content: Any) -> bytes:
        return super().render(finite(content))


def usage(report: dict[str, Any], prompt_tokens: int) -> dict[str, Any]:
    """OpenAI usage counted in the local tokenizer (prompt = the local prompt, completion = the returned steps),
    plus the split by side and the money actually spent."""
    u = report["usage"]
    completion = sum(s["tokens"] for s in report["steps"])
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "local_tokens": u["local_tokens"],
        "cloud_input_tokens": u["cloud_input_tokens"],
        "cloud_output_tokens": u["cloud_output_tokens"],
        "cost_usd": u["cost_usd"],
    }


def finish_reason(status: str) -> str:
    return "stop" if status in ("done", "ended") else "length"


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The ``edge_agent`` extension of a whole response: the session, its outcome and who wrote what."""
    return {
        "session_id": report["session_id"],
        "status": report["status"],
        "answer": report["answer"],
        "policy": report["policy"],
        "offload_ratio": report["usage"]["offload_ratio"],
        "cloud": report["cloud"],
        "steps": [{"step": s["index"], "author": s["author"], "kind": s["kind"], "trigger": s["trigger"]}
                  for s in report["steps"]],
    }


def completion(report: dict[str, Any], prompt_tokens: int, model: str, created: int) -> dict[str, Any]:
    text = "\n\n".join(s["text"] for s in report["steps"])
    return {
        "id": f"chatcmpl-{report['session_id']}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason(report["status"]), "logprobs": None}],
        "usage": usage(report, prompt_tokens),
        "edge_agent": summary(report),
    }


def chunk(sid: str, model: str, created: int, delta: dict[str, Any], finish: str | None = None,
          **extra: Any) -> dict[str, Any]:
    return {"id": f"chatcmpl-{sid}", "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else dumps(data, ensure_ascii=False)}\n\n"
