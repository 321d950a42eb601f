"""The event-time split of IcebergExampleGen: the latest 20% of the rows by time are eval, no overlap."""

import gzip
import math
import random
from datetime import datetime, timedelta, timezone

import pytest

pytestmark = pytest.mark.unit


def test_latest_fifth_of_the_rows_is_eval():
    from tfx_pipeline.components.iceberg_example_gen import event_time_split

    rnd = random.Random(3)
    # dense early, sparse late: a cut at 80% of the time range would hold far fewer than 20% of the rows
    times = [rnd.randint(1_000, 50_000) for _ in range(450)] + [rnd.randint(50_000, 101_000) for _ in range(50)]
    is_eval, cut = event_time_split(times, 0.2)
    assert cut == sorted(times)[400]
    train = [t for t, e in zip(times, is_eval) if not e]
    evals = [t for t, e in zip(times, is_eval) if e]
    assert len(train) + len(evals) == len(times)
    assert len(evals) == 100 + sum(1 for t in sorted(times)[:400] if t == cut)  # ties join eval
    assert max(train) < cut <= min(evals)


def test_ties_at_the_cut_go_together_and_bad_fractions_fail():
    from tfx_pipeline.components.iceberg_example_gen import event_time_split

    is_eval, cut = event_time_split([0, 8, 8, 8, 10], 0.2)
    assert cut == 10 and is_eval == [False, False, False, False, True]
    is_eval, cut = event_time_split([0, 1, 8, 8, 8, 8, 8, 8, 8, 10], 0.2)
    assert cut == 8 and is_eval == [False, False] + [True] * 8
    assert event_time_split([], 0.2) == ([], None)
    assert event_time_split([5, 5], 0.2)[0] == [False, False]  # one instant: all train
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError):
            event_time_split([1, 2], bad)


def test_write_examples_splits_by_decision_time(tmp_path):
    import tensorflow as tf

    from tfx_pipeline import features as F
    from tfx_pipeline.components.iceberg_example_gen import write_examples

    t0 = datetime(2015, 1, 1, tzinfo=timezone.utc)
    rows = []
    for i in range(100):
        row = {F.DECISION_TIME: t0 + timedelta(hours=i), F.LABEL_KEY: i % 3 == 0, "fare": 10.0 + i,
               "payment_type": "Cash", "trip_seconds": 60 * i, "company": None if i % 2 else "Flash Cab",
               "tip_rate_24h": math.nan}
        rows.append(row)
    random.Random(1).shuffle(rows)
    info = write_examples(rows, str(tmp_path), 0.2, F.RAW_KIND, F.LABEL_KEY, F.DECISION_TIME)
    assert info["rows_train"] + info["rows_eval"] == 100
    assert info["train_range"][1] < info["eval_range"][0]
    assert info["eval_range"][1].startswith((t0 + timedelta(hours=99)).isoformat()[:19])
    parsed = {}
    for split in ("train", "eval"):
        path = tmp_path / f"Split-{split}" / "data_tfrecord-00000-of-00001.gz"
        gzip.open(path).read(1)  # gzipped, as TFX's ExampleGen writes
        parsed[split] = [tf.train.Example.FromString(r.numpy())
                         for r in tf.data.TFRecordDataset(str(path), compression_type="GZIP")]
    assert len(parsed["eval"]) == info["rows_eval"] == 20
    ex = parsed["train"][0].features.feature
    assert "tip_rate_24h" not in ex and "pickup_community_area" not in ex  # NULL/NaN: left out, not 0
    assert ex["trip_seconds"].int64_list.value and ex["fare"].float_list.value
    assert ex[F.LABEL_KEY].int64_list.value[0] in (0, 1)
    assert max(e.features.feature["fare"].float_list.value[0] for e in parsed["train"]) < \
        min(e.features.feature["fare"].float_list.value[0] for e in parsed["eval"])
