"""Weakly supervised text-based person re-id: CMMT (ICCV 2021) without identity labels.

``textiou`` (noun phrases, Text-IoU), ``clustering`` (DBSCAN pseudo identities over k-reciprocal
Jaccard distances), ``mplr`` (Mutual Pseudo Label Refinement), ``losses`` (Text-IoU guided CMPM
and hard-sample mining), ``train`` (:func:`rasa.weak.train.train_cmmt`).
"""
