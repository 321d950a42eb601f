"""Model serving that speaks TF Serving's gRPC API, so any TF Serving client works against it unchanged.

* ``models``: TF Serving's model config, version policies and labels; :class:`~serving.models.ModelManager`
  loads versions from ``<base_path>/<version>/saved_model.pb``, warms them up, and unloads them once drained;
* ``servable``: one loaded SavedModel version, its signatures callable on numpy arrays;
* ``tensors``: TensorProto <-> numpy, with every check done before anything is allocated;
* ``inference``: Predict / Classify / Regress / GetModelMetadata on a version (shared by gRPC, warmup, REST);
* ``errors``: every request error with TF Serving's gRPC code, one table (``ERRORS``), and the HTTP mapping;
* ``grpc_server``: the PredictionService and ModelService servicers, ``build_server`` and ``serve``;
* ``rest`` / ``rest_json``: TF Serving's REST API and its JSON conversions (json_tensor.cc, Abseil's base64);
* ``flags`` / ``server``: tensorflow_model_server's command line (every flag of its main.cc) and the process;
* ``testing``: a stand-in taxi tip model, exported in about a second, and a TF1-style model of many
  signatures, for tests.

Nothing is imported here: TensorFlow is slow to import, and not every user of the package needs it.
"""
