"""`Annotated` dependency aliases: routes declare what they need, the lifespan provides it."""

from typing import Annotated, cast

from fastapi import Depends, Request

from mess.query.resources import Resources


def _resources(request: Request) -> Resources:
    return cast(Resources, request.app.state.resources)


ResourcesDep = Annotated[Resources, Depends(_resources)]
