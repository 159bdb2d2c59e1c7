"""Routes of this service (filled in by its responses module)."""


def services() -> list[type]:
    return []
