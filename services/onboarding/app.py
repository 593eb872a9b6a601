"""The onboarding service: `uvicorn services.onboarding.app:create_app --factory`."""

from __future__ import annotations

from fastapi import FastAPI

from services.onboarding.api import install_error_handlers, router
from services.onboarding.handlers import Onboarding
from services.runtime.app import build_runtime, create_service_app
from services.runtime.clock import Clock
from services.runtime.settings import Settings

DESCRIPTION = """Partner onboarding, event-sourced (stream `partner-<id>`; ids are `ptn_` + 20
random lowercase letters and digits).

Statuses: `applied` → `assessed` → `in_due_diligence` (initial_screening → detailed_evaluation
→ final_assessment; a failed phase rejects) → `awaiting_approval` (strategic: 2 distinct
approvers, others 1; any reject rejects; a `not_recommended` assessment can only be rejected)
→ `approved` (tier = the assessment's recommended tier) → `agreement_signed` → `active`;
or `rejected`.

Commands and their routes: `assess` POST /v1/partners/{id}/assessment (re-assessment allowed
until due diligence starts), `record_due_diligence` POST …/due-diligence, `approve` / `reject`
POST …/approvals (the approver is the calling client), `sign_agreement` POST …/agreement,
`activate` POST …/activate. A command that does not fit the partner's state answers 409 with
`current_state` and `allowed` (the commands that fit now). Writes need `partners:write` and
are refused to partner clients; reads need `partners:read`, and a partner client sees only
itself. Every write accepts `If-Match` (412 when stale) and `Idempotency-Key`; ops may pass
`occurred_at` (not in the future, not before the partner's last event).
"""


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> FastAPI:
    """The onboarding service app."""
    runtime = build_runtime("onboarding", settings or Settings(), clock)
    app = create_service_app(
        runtime, title="partnerhub onboarding", description=DESCRIPTION, routers=[router]
    )
    app.state.onboarding = Onboarding(runtime.store)
    install_error_handlers(app)
    return app
