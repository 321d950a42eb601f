"""One error type for everything a request can get wrong, carrying the gRPC status code TF Serving uses.

The model registry, the tensor checks and the request handlers raise :class:`ServingError`; the gRPC layer
turns it into ``context.abort(code, message)`` and a REST layer can map ``code`` to an HTTP status. Anything
else that escapes a handler is a bug and becomes INTERNAL.
"""

from __future__ import annotations

import grpc

# tensorflow.error.Code and grpc.StatusCode share their numbers; this turns one into the other.
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def code_number(self) -> int:
        """The numeric code, as ``tensorflow.error.Code`` and ``StatusProto.error_code`` spell it."""
        return self.code.value[0]


def status_code(number: int) -> grpc.StatusCode:
    """The gRPC status code with TensorFlow error code ``number`` (UNKNOWN for a number neither knows)."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)
