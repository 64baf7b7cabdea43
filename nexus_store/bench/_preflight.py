"""Before any load: is each remote a nexus-store server, and does it take the token?

:func:`check_remote` asks ``GET /health`` (no token) and then one authenticated pull of
an empty page, and turns every way that can go wrong into a :class:`BenchInputError`
with one line that says what: nothing listening, no answer, not our server, garbage, a
refused token, a batch larger than the server takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import httpx
from pydantic import ValidationError

from .._exceptions import AuthError, NetworkError, ProtocolError, RemoteError
from .._http_api import HEALTH_PATH, Health
from ..backends import HttpBackend
from ._plan import BenchInputError

__all__ = ["RemoteInfo", "check_remote"]


@dataclass(frozen=True)
class RemoteInfo:
    """What a remote said about itself."""

    url: str
    version: str
    max_batch_ops: int
    max_pull_limit: int


def _health(url: str, timeout: float) -> Health:
    where = url.rstrip("/") + HEALTH_PATH
    try:
        response = httpx.get(where, timeout=timeout, follow_redirects=False)
    except httpx.TimeoutException as exc:
        raise BenchInputError(f"{url} did not answer within {timeout:g} s") from exc
    except httpx.ConnectError as exc:
        raise BenchInputError(f"cannot reach {url}: {_reason(exc)}") from exc
    except httpx.HTTPError as exc:
        raise BenchInputError(f"{url} answered garbage: {_reason(exc)}") from exc
    if response.is_redirect and response.headers.get("location"):
        # A proxy sending http to https, or a moved deployment: name the address to give.
        raise BenchInputError(
            f"{url} redirects GET {HEALTH_PATH} to {response.headers['location']}: "
            "give the server's own address as --remote"
        )
    if response.status_code != 200:
        raise BenchInputError(
            f"{url} is not a nexus-store sync server: GET {HEALTH_PATH} answered "
            f"{response.status_code}"
        )
    try:
        return Health.model_validate_json(response.content)
    except ValidationError as exc:
        raise BenchInputError(
            f"{url} is not a nexus-store sync server: GET {HEALTH_PATH} answered "
            f"{_sample(response.content)}"
        ) from exc


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _sample(body: bytes) -> str:
    text = body[:60].decode("utf-8", "replace")
    return repr(text) + ("..." if len(body) > 60 else "")


async def _try_token(
    url: str, token: str, seconds: float, collection: str, allow_insecure_http: bool
) -> None:
    try:
        backend = HttpBackend(
            url, token=token, timeout=seconds, allow_insecure_http=allow_insecure_http
        )
    except ValueError as exc:
        raise BenchInputError(str(exc)) from exc
    async with backend:
        try:
            await backend.pull(0, 1, collections=[collection])
        except AuthError as exc:
            raise BenchInputError(f"{url} refused the token ({_reason(exc)})") from exc
        except ProtocolError as exc:
            raise BenchInputError(f"{url} answered garbage to a pull: {_reason(exc)}") from exc
        except NetworkError as exc:
            raise BenchInputError(f"cannot reach {url}: {_reason(exc)}") from exc
        except RemoteError as exc:
            raise BenchInputError(f"{url} refused a pull: {_reason(exc)}") from exc


def check_remote(
    url: str,
    token: str | None,
    *,
    batch: int,
    collection: str,
    timeout: float = 10.0,
    allow_insecure_http: bool = False,
) -> RemoteInfo:
    """Check that ``url`` is a nexus-store server that takes ``token``.

    Raises:
        BenchInputError: what is wrong, in one line.
    """
    if not token:
        raise BenchInputError("give a token: --token, or the NEXUS_STORE_TOKEN variable")
    health = _health(url, timeout)
    if health.status != "ok":
        raise BenchInputError(f"{url} says it is unavailable (GET {HEALTH_PATH}: {health.status})")
    if batch > health.limits.max_batch_ops:
        raise BenchInputError(
            f"--batch {batch} is more than {url} takes in one push "
            f"({health.limits.max_batch_ops} ops)"
        )
    anyio.run(_try_token, url, token, timeout, collection, allow_insecure_http)
    return RemoteInfo(
        url=url,
        version=health.version,
        max_batch_ops=health.limits.max_batch_ops,
        max_pull_limit=health.limits.max_pull_limit,
    )
