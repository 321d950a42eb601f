"""One loaded version of a SavedModel: its signatures, callable on numpy arrays.

A SavedModel is loaded with ``tf.saved_model.load`` (TF2 signatures, as TF Serving runs them). The
SignatureDef protos TF Serving reports in GetModelMetadata are not exposed by the loaded object, so they
are read from ``saved_model.pb`` itself: the metadata is then byte-for-byte what the exporter wrote,
``__saved_model_init_op`` included, as TF Serving shows it.

Everything here blocks (TF runs in the calling thread): the model manager calls it from thread executors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from serving.errors import ServingError, invalid_argument, status_code
from serving.tensors import check_arrays

DEFAULT_SIGNATURE = "serving_default"


class Servable:
    """A loaded model version. ``run`` is thread safe (TF concrete functions are)."""

    def __init__(self, name: str, version: int, path: Path, model: Any,
                 signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]):
        self.name = name
        self.version = version
        self.path = path
        self._model = model  # keeps the variables the signatures capture alive
        self.signature_defs = dict(signature_defs)

    @classmethod
    def load(cls, name: str, version: int, path: str | Path) -> "Servable":
        path = Path(path)
        saved_model = saved_model_pb2.SavedModel()
        saved_model.ParseFromString(tf.io.gfile.GFile(str(path / "saved_model.pb"), "rb").read())
        if not saved_model.meta_graphs:
            raise ValueError(f"{path / 'saved_model.pb'} holds no MetaGraphDef")
        model = tf.saved_model.load(str(path))
        return cls(name, version, path, model, saved_model.meta_graphs[0].signature_def)

    def signature(self, signature_name: str = DEFAULT_SIGNATURE):
        """The concrete function behind ``signature_name``.

        An unknown name is INVALID_ARGUMENT with TF Serving's own message (not NOT_FOUND: TF Serving
        treats it as a bad request for a model that exists).
        """
        functions = self._model.signatures
        if signature_name not in functions:
            raise invalid_argument(f'Serving signature name: "{signature_name}" not found in signature def')
        return functions[signature_name]

    def input_specs(self, signature_name: str = DEFAULT_SIGNATURE) -> dict[str, tf.TensorSpec]:
        """The signature's inputs by name (TF2 signatures take keyword arguments only)."""
        return dict(self.signature(signature_name).structured_input_signature[1])

    def output_specs(self, signature_name: str = DEFAULT_SIGNATURE) -> dict[str, tf.TensorSpec]:
        return dict(self.signature(signature_name).structured_outputs)

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray],
            output_filter: Iterable[str] = ()) -> dict[str, np.ndarray]:
        """Run a signature on checked inputs; only the ``output_filter`` outputs if it names any."""
        function = self.signature(signature_name)
        specs = self.input_specs(signature_name)
        check_arrays(inputs, specs)
        wanted = self._wanted_outputs(signature_name, list(output_filter))
        try:
            outputs = function(**{name: tf.constant(array, specs[name].dtype) for name, array in inputs.items()})
        except tf.errors.OpError as exc:  # e.g. a shape the graph rejects: the model's error, with its code
            raise ServingError(status_code(exc.error_code), exc.message) from exc
        return {name: outputs[name].numpy() for name in wanted}

    def _wanted_outputs(self, signature_name: str, output_filter: list[str]) -> list[str]:
        names = list(self.output_specs(signature_name))
        if not output_filter:
            return names
        if len(set(output_filter)) != len(output_filter):
            raise invalid_argument(f"output_filter {output_filter} names an output twice")
        unknown = sorted(set(output_filter) - set(names))
        if unknown:
            raise invalid_argument(f"output tensor alias not found in signature: {unknown}; "
                                   f"outputs expected to be in the set {sorted(names)}")
        return output_filter
