"""The package's one exception type."""


class SparseDiffusionError(ValueError):
    """Raised for bad input or an unsupported request.

    Messages name the offending shape, dtype or value and say what to do instead. It subclasses
    ``ValueError`` so callers that already catch ``ValueError`` keep working.
    """
