"""Non-canonical and tricky spellings of a request path, for the authorization tests: repeated
and encoded slashes, dot segments, encoded dots, case, trailing slashes, ``;`` parameters and
query tricks."""

from __future__ import annotations

from collections.abc import Iterator


def variants(path: str) -> Iterator[str]:
    """Non-canonical and tricky spellings of a canonical path."""
    first, _, rest = path[1:].partition("/")
    rest = f"/{rest}" if rest else ""
    other = "v1" if first == "v2" else "v2"
    yield f"//{first}{rest}"
    yield f"/{first}/{rest}" if rest else f"/{first}//"
    yield f"/{first}{rest.replace('/', '//')}"
    if rest:
        yield f"/{first}%2F{rest[1:]}"
        yield f"/{first}%2f{rest[1:]}"
        yield f"/{first}/.{rest}"
        yield f"/{first}/x/..{rest}"
        yield f"/{first}/%2e{rest}"
        yield f"/{first}/x/%2E%2E{rest}"
        yield f"/{first};x=1{rest}"
        yield f"/{first}\\{rest[1:]}"
        last = path.rsplit("/", 1)[1]
        yield path[: -len(last)] + f"%{ord(last[0]):02X}" + last[1:]
    yield f"/{other}/..{path}"
    yield f"/%{ord(first[0]):02x}{first[1:]}{rest}"
    yield path.upper()
    yield f"/{first.upper()}{rest}"
    yield f"{path}/"
    yield f"{path};a=b"
    yield f"{path}?x=/../v1/keys"
    yield f"{path}?%2F..%2Fv1%2Fkeys"
    yield f"{path}/?"
