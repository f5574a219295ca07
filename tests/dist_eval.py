"""Run by tests/test_train.py under 1 or 2 processes: evaluate one model.pt on one split.

accelerate launch … tests/dist_eval.py MODEL SHARDS SPLIT OUT.json
"""

from __future__ import annotations

import json
import sys

from accelerate import Accelerator

from artclf.data import eval_loader, read_info
from artclf.engine import evaluate
from artclf.model import load_model


def main() -> None:
    model_path, shards, split, out = sys.argv[1:5]
    acc = Accelerator(cpu=True)
    model, blob = load_model(model_path)
    model = acc.prepare(model)
    info = read_info(shards)
    from artclf.transforms import Preprocess

    pre = Preprocess.from_dict(blob["preprocess"])
    batches = eval_loader(info, split, pre, 4, 1, acc.process_index, acc.num_processes)
    metrics, preds = evaluate(acc, model, batches, blob["classes"], info["splits"][split]["num_samples"])
    if acc.is_main_process:
        with open(out, "w") as f:
            json.dump({"world": acc.num_processes, "keys": preds["keys"], **metrics}, f)
    acc.wait_for_everyone()  # no rank tears down while another still talks to it
    acc.end_training()  # destroy the process group: exiting with a live one can abort (SIGABRT)


if __name__ == "__main__":
    main()
