"""Teachers write the instruction data; one interface, three implementations (symbolic.py, remote.py).

    teacher.complete(messages) -> str     messages: [{"role": "system"|"user"|"assistant", "content": str}]
    teacher.identity                      names the teacher and its settings (part of the cache key); never a secret
"""


class TeacherError(RuntimeError):
    """One teacher call failed for good (after its retries); the run counts it and moves on."""


class TeacherFatalError(TeacherError):
    """The teacher cannot work at all (bad key, unknown model): stop the run instead of failing every call."""


class TeacherBudgetExhausted(TeacherError):
    """The request budget is spent; the run stops and keeps what it has (the cache resumes it later)."""


class Teacher:
    """Messages in, text out. Subclasses set `identity` and implement `complete`."""

    identity: str = "teacher"

    def complete(self, messages: list[dict[str, str]]) -> str:
        raise NotImplementedError


def last_user_message(messages: list[dict[str, str]]) -> str:
    """The content of the last user message: the context a teacher is asked about."""
    user = [m.get("content", "") for m in messages if m.get("role") == "user"]
    if not user:
        raise ValueError("no user message: nothing for the teacher to read")
    return user[-1]
