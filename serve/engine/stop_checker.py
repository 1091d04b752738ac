"""Stop conditions checked after each appended output token, in OpenAI's order of precedence."""

from __future__ import annotations

from serve.engine.request import Request, RequestStatus


class StopChecker:
    def __init__(self, eos_token_ids: tuple[int, ...] = ()) -> None:
        self.eos_token_ids = frozenset(eos_token_ids)

    def check(self, req: Request, token_id: int) -> RequestStatus | None:
        """The finished status `req` reaches with `token_id` (already appended), or None.

        Feeds the detokenizer, so it must be called exactly once per appended token.
        """
        params = req.params
        if req.matcher is not None and token_id in self.eos_token_ids:
            # The mask allows EOS only where the grammar may end: a constrained output is complete
            # there, also under ignore_eos (nothing may follow it).
            req.stop_reason = token_id
            return RequestStatus.FINISHED_STOPPED
        if req.matcher is not None and not req.matcher.accept(token_id):
            raise RuntimeError(f"request {req.req_id}: token {token_id} is outside its grammar")
        if not params.ignore_eos and token_id in self.eos_token_ids:
            req.stop_reason = token_id
            return RequestStatus.FINISHED_STOPPED
        if token_id in params.stop_token_ids:
            req.stop_reason = token_id
            return RequestStatus.FINISHED_STOPPED
        if req.detokenizer is not None:
            hit = req.detokenizer.add_token(token_id)
            if hit is not None:
                req.stop_reason = hit
                return RequestStatus.FINISHED_STOPPED
        if req.num_output_tokens >= req.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        return None
