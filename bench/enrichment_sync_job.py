"""The synchronous baseline of bench/enrichment.py, as a Flink job: the enrichment job's source, then a
plain ``map`` making one blocking ``Predict`` per end event (``grpc.insecure_channel``), then the same Kafka
sink. No Redis reads (all context missing) and no Iceberg sink, which favours the baseline.

    flink run -py bench/enrichment_sync_job.py --config TENANT.yaml --bounded --parallelism 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL = "tips"


def baseline_job(argv: list[str]) -> None:
    from pyflink.common import Row
    from pyflink.datastream import MapFunction, StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    from flink_jobs import feature_sql as fsql
    from flink_jobs.common import ensure_pipeline_jars
    from flink_jobs.enrich_job import input_fields, kafka_insert, kafka_sink_ddl, output_type, trips_query
    from flink_jobs.features_job import configure
    from iceberg_schemas.sources import TRIPS
    from liveml.config import load_config

    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline-job", action="store_true")
    parser.add_argument("--config", required=True)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--bounded", action="store_true")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)

    class SyncPredict(MapFunction):
        """One blocking Predict per event, the way a plain ``map`` would call a model."""

        def __init__(self, address: str, model: str, label: str, signature: str, deadline_s: float,
                     names: list[str]):
            self.address, self.model, self.label = address, model, label
            self.signature, self.deadline_s, self.names = signature, deadline_s, names

        def open(self, runtime_context) -> None:
            import grpc

            from serving.protos import light_tensorflow
            from tfx_pipeline.features import missing_serving_value

            with light_tensorflow():
                from tensorflow_serving.apis import (get_model_metadata_pb2, predict_pb2,
                                                     prediction_service_pb2_grpc)
            from serving.client import PredictionClient

            self.predict_pb2, self.missing = predict_pb2, missing_serving_value
            self.channel = grpc.insecure_channel(self.address)
            self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
            req = get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=PredictionClient.spec(self.model), metadata_field=["signature_def"])
            resp = self.stub.GetModelMetadata(req, timeout=10)
            defs = get_model_metadata_pb2.SignatureDefMap()
            resp.metadata["signature_def"].Unpack(defs)
            self.dtypes = {k: v.dtype for k, v in defs.signature_def[self.signature].inputs.items()}
            self.spec = PredictionClient.spec(self.model, label=self.label, signature=self.signature)

        def close(self) -> None:
            self.channel.close()

        def map(self, value):
            import grpc

            from flink_jobs import enrich as E
            from serving.client import from_tensor, to_tensor

            started = time.time()
            event = value.as_dict()
            assembled = E.assemble(event, [None] * len(E.context_requests(event)))
            inputs = E.model_inputs(assembled.features, self.missing)
            req = self.predict_pb2.PredictRequest(model_spec=self.spec)
            for name, dtype in self.dtypes.items():
                req.inputs[name].CopyFrom(to_tensor(inputs[name], dtype))
            try:
                resp = self.stub.Predict(req, timeout=self.deadline_s)
                outputs = resp.outputs
                scores = outputs["probabilities"] if "probabilities" in outputs else next(iter(outputs.values()))
                outcome = E.Outcome("ok", float(from_tensor(scores).reshape(-1)[0]), resp.model_spec.version.value)
            except grpc.RpcError as exc:
                outcome = E.Outcome(E.status_of(exc.code().name), reason=str(exc.details()))
            now = time.time()
            row = E.prediction_row(event, assembled, outcome, self.model, self.label, (now - started) * 1000,
                                   int(now * 1000))
            return Row(*(row[n] for n in self.names))

    env = StreamExecutionEnvironment.get_execution_environment()
    t_env = StreamTableEnvironment.create(env)
    ensure_pipeline_jars(t_env, cfg)
    configure(t_env, args.parallelism, "bench-enrich-sync")
    for ddl in fsql.good_events_ddl(TRIPS, cfg, "bench-enrich-sync", args.bounded):
        t_env.execute_sql(ddl)
    trips = t_env.to_data_stream(t_env.sql_query(trips_query(input_fields())))
    names, out_type = output_type()
    fn = SyncPredict(cfg.serving.grpc, cfg.serving.model_name, cfg.enrich.label, cfg.enrich.signature,
                     cfg.enrich.deadline_ms / 1000.0, names)
    enriched = trips.map(fn, output_type=out_type).name("predict (sync gRPC)")
    t_env.create_temporary_view("enriched", t_env.from_data_stream(enriched))
    t_env.execute_sql(kafka_sink_ddl(cfg, exactly_once=False))
    stmts = t_env.create_statement_set()
    stmts.add_insert_sql(kafka_insert(names))
    stmts.attach_as_datastream()
    env.execute("bench-enrich-sync")


if __name__ == "__main__":
    baseline_job(sys.argv[1:])
