"""Evaluation and reports: the metrics semi-supervised papers report, on nnU-Net's folders.

* :mod:`~nnunet_semi.evaluation.metrics`: per-mask metrics and the empty-mask policy (``nnunet`` and ``ssl4mis``).
* :mod:`~nnunet_semi.evaluation.folders`: prediction folders, test sets and trained model folders -> per-case metrics.
* :mod:`~nnunet_semi.evaluation.aggregate`: per-fold means, mean +- std over folds, gap closed.
* :mod:`~nnunet_semi.evaluation.report`: Markdown, CSV, JSON and PNG from one :class:`MethodResults` per row.
* :mod:`~nnunet_semi.evaluation.cli`: ``nnunet-semi evaluate``.
"""
