"""What a model's predictions score, shared by train, evaluate, predict and serve.

- ``classification``: accuracy, macro F1/precision/recall, top-5, confusion matrix, ECE, log loss
- ``calibration``: the temperature fitted on val, the open-set threshold ("none of these artists")
- ``eval_loop``: exact evaluation across ranks: every sample of a split scored once, any world size

It exports nothing itself: import from the module that holds the name.
"""
