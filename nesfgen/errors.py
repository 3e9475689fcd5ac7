"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """A mistake in the user's input: the CLI prints the message and exits with code 2."""


def require(holds: bool, key: str, value: object, expected: str) -> None:
    """Check one option where it is parsed, so a bad value is ``key=value: expected ...`` (exit 2), not a
    failure deep inside a library or silently another meaning. Comparisons with NaN are False: NaN is refused."""
    if not holds:
        raise UserError(f"{key}={value}: expected {expected}")
