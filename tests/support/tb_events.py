"""What TensorBoard's HParams view shows of a run: read from its event files with TensorBoard's
own reader and protobufs, not with artclf's writer."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

SESSION_START = "_hparams_/session_start_info"  # the run's hyper-parameters (tensorboard.plugins.hparams)


def hparams_of(run: Path) -> tuple[dict, dict]:
    """(hyper-parameters, ``hparam/*`` metrics) of RUN/tb, the later event file's values winning."""
    params: dict = {}
    metrics: dict = {}
    for path in sorted((run / "tb").glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                if v.tag == SESSION_START:
                    data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    for k, value in data.session_start_info.hparams.items():
                        params[k] = getattr(value, value.WhichOneof("kind"))
                elif v.tag.startswith("hparam/"):
                    simple = v.HasField("simple_value")
                    metrics[v.tag] = v.simple_value if simple else float(tensor_util.make_ndarray(v.tensor))
    return params, metrics
