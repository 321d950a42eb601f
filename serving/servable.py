"""One loaded version of a SavedModel: its signatures, callable on numpy arrays.

A SavedModel is loaded with ``tf.saved_model.load`` (TF2 signatures, as TF Serving runs them; a TF1
SavedModel's signatures load the same way). The SignatureDef protos TF Serving reports in
GetModelMetadata, and checks requests against, are not exposed by the loaded object, so they are read
from ``saved_model.pb`` itself: the metadata is then byte-for-byte what the exporter wrote,
``__saved_model_init_op`` included, as TF Serving shows it.

Everything here blocks (TF runs in the calling thread): the model manager calls it from thread executors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from serving.errors import fail, scrub, status_code

DEFAULT_SIGNATURE = "serving_default"
SERVE_TAG = "serve"


@dataclass(frozen=True)
class InferenceOptions:
    """Server-wide switches that change how requests run (``tensorflow_model_server`` flags).

    ``method_name_check``: ``--enable_signature_method_name_check`` (off by default, as in TF Serving);
    ``tensor_content``: ``--enable_serialization_as_tensor_content``, Predict outputs in ``tensor_content``
    instead of the typed value fields (TF Serving's default: the value fields);
    ``warmup_iterations``: ``--num_request_iterations_for_warmup`` (each warmup record is replayed this many
    times; 0 or 1: once).
    """
    method_name_check: bool = False
    tensor_content: bool = False
    warmup_iterations: int = 1


class Servable:
    """A loaded model version. ``run`` is thread safe (TF concrete functions are)."""

    def __init__(self, name: str, version: int, path: Path, model: Any,
                 signature_defs: Mapping[str, meta_graph_pb2.SignatureDef],
                 options: InferenceOptions = InferenceOptions()):
        self.name = name
        self.version = version
        self.path = path
        self._model = model  # keeps the variables the signatures capture alive
        self.signature_defs = dict(signature_defs)
        self.options = options

    @classmethod
    def load(cls, name: str, version: int, path: str | Path, *, tags: Iterable[str] = (SERVE_TAG,),
             options: InferenceOptions = InferenceOptions()) -> "Servable":
        """Load ``path``'s MetaGraphDef tagged ``tags`` (TF Serving's ``--saved_model_tags``, default serve)."""
        path = Path(path)
        wanted = set(tags) or {SERVE_TAG}
        saved_model = saved_model_pb2.SavedModel()
        saved_model.ParseFromString(tf.io.gfile.GFile(str(path / "saved_model.pb"), "rb").read())
        graphs = [g for g in saved_model.meta_graphs if set(g.meta_info_def.tags) == wanted]
        if not graphs:
            found = [sorted(g.meta_info_def.tags) for g in saved_model.meta_graphs]
            raise ValueError(f"Could not find meta graph def matching supplied tags: {{ {' '.join(sorted(wanted))} "
                             f"}}. Available tag sets: {found}")
        model = tf.saved_model.load(str(path), tags=sorted(wanted))
        return cls(name, version, path, model, graphs[0].signature_def, options)

    def signature_def(self, signature_name: str, row: str, message: str) -> meta_graph_pb2.SignatureDef:
        """The SignatureDef named ``signature_name``; if the version has none, the error of table row ``row``
        with ``message`` (each API words and codes it its own way in TF Serving)."""
        signature = self.signature_defs.get(signature_name)
        if signature is None or signature_name not in self._model.signatures:
            raise fail(row, message)
        return signature

    def input_specs(self, signature_name: str = DEFAULT_SIGNATURE) -> dict[str, tf.TensorSpec]:
        """The signature's inputs by name (TF2 signatures take keyword arguments only); the signature must
        exist (see :meth:`signature_def`)."""
        return dict(self._model.signatures[signature_name].structured_input_signature[1])

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray],
            outputs: Iterable[str] = ()) -> dict[str, np.ndarray]:
        """Run a signature on inputs already checked against it (:mod:`serving.inference`): the ``outputs``
        it names, or all of them.

        A failing op (e.g. ParseExample on a feature of another type) is the op's own status code and
        message, as TF Serving's session returns them, without the Python stack TensorFlow adds.
        """
        function = self._model.signatures[signature_name]
        specs = function.structured_input_signature[1]
        try:
            result = function(**{name: tf.constant(array, specs[name].dtype) for name, array in inputs.items()})
        except tf.errors.OpError as exc:
            raise fail("model_op_failed", scrub(exc.message), status_code(exc.error_code)) from None
        wanted = list(outputs) or list(result)
        return {name: result[name].numpy() for name in wanted}
